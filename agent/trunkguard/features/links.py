"""Links: the host's uplinks watched through netlink (section `links`).

A link is a target `link:NAME`; trunks reached through it may `depends_on` it and
paths may `require` it. The watcher reports the kernel's view; the core applies
the holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator

from trunkguard.core.engine import CoreSpec
from trunkguard.core.ids import link
from trunkguard.core.link import LinkParams
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import IpAddress, Strict, ZeroDuration
from trunkguard.watch.links import LinkSpec, LinkWatcher

if TYPE_CHECKING:
    from trunkguard.config import Config


def _check_ifname(v: str) -> str:
    if not 0 < len(v.encode()) < 16 or "/" in v or v.strip() != v or v in (".", ".."):
        raise ValueError(f"bad interface name {v!r}")
    return v


class LinkConfig(Strict):
    interface: Annotated[str, AfterValidator(_check_ifname)]
    gateway: IpAddress | None = None
    address: IpAddress | None = None
    down_when: list[Literal["admin", "carrier", "address", "neighbour"]] = [
        "admin",
        "carrier",
        "address",
        "neighbour",
    ]
    up_hold: ZeroDuration = 5.0
    down_hold: ZeroDuration = 0.0

    def spec(self, name: str) -> LinkSpec:
        return LinkSpec(name, self.interface, self.gateway, self.address, frozenset(self.down_when))


class Links(Feature):
    name = "links"

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        for name, lc in cfg.links.items():
            spec.links[link(name)] = LinkParams(lc.up_hold, lc.down_hold)

    def build(self, ctx: Context) -> Parts:
        if not ctx.cfg.links:
            return Parts()
        specs = [lc.spec(n) for n, lc in ctx.cfg.links.items()]
        watcher = LinkWatcher(specs, ctx.hub.link, log=ctx.log, clock=ctx.hub.clock)
        return Parts(tasks=[("links", watcher.run)])


FEATURE = Links()
