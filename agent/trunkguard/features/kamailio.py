"""Kamailio's dispatcher: a path's destinations active, its group's others off
(path action `kamailio`, settings `actuators.kamailio`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from trunkguard.act.base import Actuator
from trunkguard.act.kamailio import DispatcherChoice, KamailioActuator, parse_rpc
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Duration, Lines, Strict

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trunkguard.config import Config


class DispatcherAction(Strict):
    """These destinations of `setid` active, the group's others off."""

    setid: int = Field(ge=0)
    active: list[str] = Field(min_length=1)

    @field_validator("active")
    @classmethod
    def _uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            if not uri.startswith(("sip:", "sips:")) or any(c.isspace() for c in uri):
                raise ValueError(f"destination must be a sip: URI as in dispatcher.list: {uri!r}")
        return v


class KamailioSettings(Strict):
    rpc: str  # http://127.0.0.1:5071/RPC or unix:/run/kamailio/kamailio_rpc.sock
    timeout: Duration = 2.0
    off_state: Literal["disabled", "inactive"] = "disabled"

    @field_validator("rpc")
    @classmethod
    def _rpc(cls, v: str) -> str:
        parse_rpc(v)
        return v


class Kamailio(Feature):
    name = "kamailio"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems: list[str] = []
        owner: dict[tuple[int, str], str] = {}
        for gname, g in cfg.routes.items():
            for i, p in enumerate(g.paths):
                ka = p.actions.kamailio
                if ka is None:
                    continue
                for uri in ka.active:
                    # Two groups steering one destination would undo each other for ever.
                    other = owner.setdefault((ka.setid, uri), gname)
                    if other != gname:
                        loc = ("routes", gname, "paths", i, "actions", "kamailio")
                        msg = f"destination {uri} (set {ka.setid}) is also steered by group {other}"
                        problems.append(lines.problem(loc, msg))
        if owner and cfg.actuators.kamailio is None:
            msg = "paths use kamailio actions: set actuators.kamailio.rpc"
            problems.append(lines.problem(("actuators",), msg))
        return problems

    def actuators(self, cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
        ks = cfg.actuators.kamailio
        choices = {
            (g, p.name): DispatcherChoice(ka.setid, tuple(ka.active))
            for g, gc in cfg.routes.items()
            for p in gc.paths
            if (ka := p.actions.kamailio) is not None
        }
        if not choices or ks is None:
            return []
        return [
            KamailioActuator(
                "kamailio", ks.rpc, choices, timeout=ks.timeout, off_state=ks.off_state
            )
        ]

    def build(self, ctx: Context) -> Parts:
        return Parts(actuators=self.actuators(ctx.cfg, ctx.env))


FEATURE = Kamailio()
