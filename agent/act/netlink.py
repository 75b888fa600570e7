"""Kernel routes as an actuator: each (group, path) maps to a set of routes.

Routes are installed with an atomic RTM_NEWROUTE replace (NLM_F_CREATE |
NLM_F_REPLACE), never delete-then-add, so no packet ever meets a missing route.
A route is identified the way the kernel does it: (prefix, table, metric).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import create_socket

from agent.act.base import ActuatorError

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTN_UNICAST = 1
RT_SCOPE_LINK = 253
IP6_RT_PRIO_USER = 1024  # the kernel's metric for an IPv6 route given 0/none

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RouteKey = tuple[str, int, int]
# What the kernel has for one key: (type, gateway, oif).
Seen = tuple[int, str | None, int | None]


@dataclass(frozen=True)
class RouteSpec:
    """One route. dst is a CIDR prefix or "default" (IPv4 unless the gateway is
    IPv6; write "::/0" for an IPv6 default without a gateway)."""

    dst: str
    gateway: str | None = None
    dev: str | None = None
    table: int | None = None
    metric: int | None = None

    def __post_init__(self) -> None:
        if self.gateway is None and self.dev is None:
            raise ValueError(f"route {self.dst}: needs a gateway or a dev")
        net = _network(self)
        if self.gateway is not None:
            gw = ipaddress.ip_address(self.gateway)
            if gw.version != net.version:
                raise ValueError(f"route {self.dst}: gateway {self.gateway} is another family")
        if self.dev is not None and not 0 < len(self.dev.encode()) < 16:
            raise ValueError(f"route {self.dst}: bad interface name {self.dev!r}")
        if self.table is not None and not 0 < self.table < 2**32:
            raise ValueError(f"route {self.dst}: table must be 1..4294967295")
        if self.metric is not None and not 0 <= self.metric < 2**32:
            raise ValueError(f"route {self.dst}: metric must be 0..4294967295")


def _network(spec: RouteSpec) -> Network:
    if spec.dst == "default":
        v6 = spec.gateway is not None and ":" in spec.gateway
        return ipaddress.ip_network("::/0" if v6 else "0.0.0.0/0")
    return ipaddress.ip_network(spec.dst)  # strict: host bits set is a config error


def route_key(spec: RouteSpec) -> RouteKey:
    """The kernel's identity of a route: (prefix, table, effective metric)."""
    net = _network(spec)
    metric = spec.metric or 0
    if net.version == 6 and metric == 0:
        metric = IP6_RT_PRIO_USER
    return (str(net), spec.table or MAIN_TABLE, metric)


def _describe(spec: RouteSpec) -> str:
    parts = [str(_network(spec))]
    if spec.gateway:
        parts.append(f"via {spec.gateway}")
    if spec.dev:
        parts.append(f"dev {spec.dev}")
    parts.append(f"table {spec.table or MAIN_TABLE}")
    if spec.metric is not None:
        parts.append(f"metric {spec.metric}")
    return " ".join(parts)


def _seen_key(msg: Any) -> RouteKey | None:
    if msg["tos"]:
        return None  # we never install TOS routes; they are someone else's
    family = msg["family"]
    dst = msg.get("dst") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
    return (str(net), int(msg.get("table") or msg["table"]), int(msg.get("priority") or 0))


def _matches(spec: RouteSpec, oif: int | None, seen: list[Seen]) -> bool:
    if len(seen) != 1:  # absent, or ambiguous duplicates
        return False
    rtype, gateway, seen_oif = seen[0]
    if rtype != RTN_UNICAST:
        return False
    want_gw = ipaddress.ip_address(spec.gateway) if spec.gateway else None
    if (ipaddress.ip_address(gateway) if gateway else None) != want_gw:
        return False
    return spec.dev is None or seen_oif == oif


def _request(spec: RouteSpec, oif: int | None) -> dict[str, Any]:
    net = _network(spec)
    req: dict[str, Any] = {
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "table": spec.table or MAIN_TABLE,
        "type": RTN_UNICAST,
        "proto": "static",
    }
    if spec.metric is not None:
        req["priority"] = spec.metric
    if spec.gateway is not None:
        req["gateway"] = spec.gateway
    elif net.version == 4:
        req["scope"] = RT_SCOPE_LINK  # as `ip route ... dev X` does
    if oif is not None:
        req["oif"] = oif
    return req


class NetlinkActuator:
    kind = "netlink"
    reads_before_write = True  # apply() dumps and replaces only what differs

    def __init__(
        self,
        name: str,
        routes: Mapping[tuple[str, str], Sequence[RouteSpec]],
        *,
        netns: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.name = name
        self._routes = {gp: tuple(specs) for gp, specs in routes.items()}
        self._netns = netns
        self._timeout = timeout
        self._ipr: Any = None  # AsyncIPRoute, opened lazily
        owner: dict[RouteKey, str] = {}
        for (group, path), specs in self._routes.items():
            keys = [route_key(s) for s in specs]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{name}: {group}/{path} lists one route twice")
            for key in keys:
                # Two groups steering one route would fight for ever.
                if owner.setdefault(key, group) != group:
                    raise ValueError(f"{name}: route {key} is in groups {owner[key]} and {group}")

    def _wanted(self, desired: Mapping[str, str]) -> list[RouteSpec]:
        return [s for gp in desired.items() for s in self._routes.get(gp, ())]

    async def apply(self, desired: Mapping[str, str]) -> bool:
        wanted = self._wanted(desired)
        if not wanted:
            return False
        group_of = {id(s): gp[0] for gp in desired.items() for s in self._routes.get(gp, ())}
        failures: list[str] = []
        failed: set[str] = set()
        wrote = False
        async with self._session("apply") as ipr:
            seen = await self._dump(ipr, wanted)
            for spec in wanted:
                try:
                    oif = await self._ifindex(ipr, spec.dev)
                    if oif is None and spec.dev is not None:
                        raise ActuatorError("netlink", f"interface {spec.dev!r} not found")
                    if _matches(spec, oif, seen.get(route_key(spec), [])):
                        continue  # already right: no write, no notification
                    log.info("%s: replace %s", self.name, _describe(spec))
                    await ipr.route("replace", **_request(spec, oif))
                    wrote = True
                except ActuatorError as e:
                    failures.append(f"{_describe(spec)}: {e.message}")
                    failed.add(group_of[id(spec)])
                except NetlinkError as e:
                    failures.append(f"replace {_describe(spec)}: {_nl_text(e)}")
                    failed.add(group_of[id(spec)])
        if failures:
            msg = f"{self.name}{self._where()}: " + "; ".join(failures)
            raise ActuatorError("netlink", msg, frozenset(failed))
        return wrote

    async def verify(self, desired: Mapping[str, str]) -> bool:
        wanted = self._wanted(desired)
        if not wanted:
            return True
        async with self._session("verify") as ipr:
            seen = await self._dump(ipr, wanted)
            for spec in wanted:
                oif = await self._ifindex(ipr, spec.dev)
                if spec.dev is not None and oif is None:
                    return False
                if not _matches(spec, oif, seen.get(route_key(spec), [])):
                    return False
        return True

    async def close(self) -> None:
        self._reset()

    def _where(self) -> str:
        return f" (netns {self._netns})" if self._netns else ""

    @asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[Any]:
        """The shared socket with a deadline; a socket-level failure drops it."""
        try:
            async with asyncio.timeout(self._timeout):
                if self._ipr is None:
                    self._ipr = await self._open()
                yield self._ipr
        except ActuatorError:
            raise
        except TimeoutError as e:
            self._reset()
            raise ActuatorError("timeout", f"{self.name}: netlink {what} timed out") from e
        except NetlinkError as e:
            raise ActuatorError("netlink", f"{self.name}: {what}: {_nl_text(e)}") from e
        except OSError as e:
            self._reset()
            msg = f"{self.name}{self._where()}: netlink {what}: {e}"
            raise ActuatorError("netlink", msg) from e
        except BaseException:
            self._reset()
            raise

    async def _open(self) -> Any:
        # Entering a netns forks a helper in pyroute2; keep that off the loop.
        # flags=0: a missing namespace is an error, never silently created.
        sock = await asyncio.to_thread(
            create_socket, self._netns, socket.AF_NETLINK, socket.SOCK_DGRAM,
            NETLINK_ROUTE, flags=0,
        )
        # groups=0: we only send requests, so no multicast backlog piles up.
        return AsyncIPRoute(fileno=sock.detach(), groups=0)

    def _reset(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            try:
                ipr.close()
            except Exception:
                log.debug("closing netlink socket failed", exc_info=True)

    async def _ifindex(self, ipr: Any, dev: str | None) -> int | None:
        if dev is None:
            return None
        found = await ipr.link_lookup(ifname=dev)
        return int(found[0]) if found else None

    async def _dump(self, ipr: Any, specs: list[RouteSpec]) -> dict[RouteKey, list[Seen]]:
        seen: dict[RouteKey, list[Seen]] = {}
        families = {_network(s).version for s in specs}
        for family in sorted(families):
            af = socket.AF_INET6 if family == 6 else socket.AF_INET
            async for msg in await ipr.route("dump", family=af):
                key = _seen_key(msg)
                if key is not None:
                    entry = (msg["type"], msg.get("gateway"), msg.get("oif"))
                    seen.setdefault(key, []).append(entry)
        return seen


def _nl_text(e: NetlinkError) -> str:
    return str(e.args[1]) if len(e.args) > 1 else str(e)
