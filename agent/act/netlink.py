"""Kernel routes as an actuator: each (group, path) maps to a set of routes.

Routes are installed with an atomic RTM_NEWROUTE replace (NLM_F_CREATE |
NLM_F_REPLACE), never delete-then-add, so no packet ever meets a missing route.
A route is identified the way the kernel does it: (prefix, table, metric).

A group's desired value may join several path names with "+" in preference order
("a+b"): the routes of the listed paths that share a key become one weighted
multipath route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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
MAX_WEIGHT = 256  # rtnh_hops is a byte holding weight - 1
U32_MAX = 2**32 - 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RouteKey = tuple[str, int, int]
# One nexthop: (gateway, oif, weight); a wanted oif of None matches any interface.
Hop = tuple[str | None, int | None, int]


@dataclass(frozen=True)
class RouteSpec:
    """One route. dst is a CIDR prefix or "default" (IPv4 unless the gateway is
    IPv6; write "::/0" for an IPv6 default without a gateway). weight is this
    nexthop's share when paths are merged into a multipath route."""

    dst: str
    gateway: str | None = None
    dev: str | None = None
    table: int | None = None
    metric: int | None = None
    weight: int = 1

    def __post_init__(self) -> None:
        if self.gateway is None and self.dev is None:
            raise ValueError(f"route {self.dst}: needs a gateway or a dev")
        net = _network(self)
        if self.gateway is not None:
            gw = ipaddress.ip_address(self.gateway)
            if gw.version != net.version:
                raise ValueError(f"route {self.dst}: gateway {self.gateway} is another family")
        if self.dev is not None and not _ifname_ok(self.dev):
            raise ValueError(f"route {self.dst}: bad interface name {self.dev!r}")
        if self.table is not None and not 0 < self.table <= U32_MAX:
            raise ValueError(f"route {self.dst}: table must be 1..4294967295")
        if self.metric is not None and not 0 <= self.metric <= U32_MAX:
            raise ValueError(f"route {self.dst}: metric must be 0..4294967295")
        if not 1 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"route {self.dst}: weight must be 1..{MAX_WEIGHT}")


def _ifname_ok(name: str) -> bool:
    return 0 < len(name.encode()) < 16


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


def _ip(addr: str | None) -> str | None:
    return str(ipaddress.ip_address(addr)) if addr else None


@dataclass(frozen=True)
class _Route:
    """One key's wanted route: plain from one spec, multipath from several."""

    group: str
    key: RouteKey
    specs: tuple[RouteSpec, ...]


@dataclass(frozen=True)
class _Seen:
    """One route the kernel has under a key."""

    type: int
    hops: tuple[Hop, ...]
    multipath: bool


def _merge(specs: Iterable[RouteSpec]) -> tuple[RouteSpec, ...]:
    """Fold nexthops that are the same (gateway, dev) into one, weights added: the
    kernel refuses duplicate IPv6 nexthops, and a next hop that two paths share
    carries both their shares."""
    merged: dict[tuple[str | None, str | None], RouteSpec] = {}
    for s in specs:
        nh = (_ip(s.gateway), s.dev)
        prev = merged.get(nh)
        weight = s.weight if prev is None else min(prev.weight + s.weight, MAX_WEIGHT)
        merged[nh] = dataclasses.replace(prev or s, weight=weight)
    return tuple(merged.values())


def _describe_hop(spec: RouteSpec) -> str:
    parts = []
    if spec.gateway:
        parts.append(f"via {spec.gateway}")
    if spec.dev:
        parts.append(f"dev {spec.dev}")
    return " ".join(parts)


def _describe(route: _Route) -> str:
    dst, table, _ = route.key
    first = route.specs[0]
    if len(route.specs) == 1:
        parts = [dst, _describe_hop(first), f"table {table}"]
    else:
        hops = ", ".join(f"{_describe_hop(s)} weight {s.weight}" for s in route.specs)
        parts = [dst, f"table {table}", f"nexthops {hops}"]
    if first.metric is not None:
        parts.append(f"metric {first.metric}")
    return " ".join(parts)


def _seen_key(msg: Any) -> RouteKey | None:
    if msg["tos"]:
        return None  # we never install TOS routes; they are someone else's
    family = msg["family"]
    dst = msg.get("dst") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
    return (str(net), int(msg.get("table") or msg["table"]), int(msg.get("priority") or 0))


def _collect(msgs: Iterable[Any]) -> dict[RouteKey, list[_Seen]]:
    """Route dump messages by key. A multipath route comes as one message with
    RTA_MULTIPATH (IPv4; IPv6 since Linux 4.11), each nexthop's weight in rtnh_hops."""
    seen: dict[RouteKey, list[_Seen]] = {}
    for msg in msgs:
        key = _seen_key(msg)
        if key is None:
            continue
        nexthops = msg.get("multipath")
        if nexthops:
            hops = tuple((_ip(nh.get("gateway")), nh["oif"], nh["hops"] + 1) for nh in nexthops)
        else:
            hops = ((_ip(msg.get("gateway")), msg.get("oif"), 1),)
        seen.setdefault(key, []).append(_Seen(msg["type"], hops, bool(nexthops)))
    for key, entries in seen.items():
        # Before 4.11 the kernel dumped each nexthop of an IPv6 multipath route as a
        # route of its own (and knew no weights); only gateway routes were siblings.
        if ":" in key[0] and len(entries) > 1 and all(
            e.type == RTN_UNICAST and not e.multipath and e.hops[0][0] for e in entries
        ):
            seen[key] = [_Seen(RTN_UNICAST, tuple(e.hops[0] for e in entries), True)]
    return seen


def _same_hops(want: Sequence[Hop], seen: Sequence[Hop], *, weights: bool) -> bool:
    if len(want) != len(seen):
        return False
    left = list(seen)
    # Nexthops naming a dev first: one without a dev matches any interface and must
    # not take the one a dev-bound nexthop needs.
    for gateway, oif, weight in sorted(want, key=lambda h: h[1] is None):
        for i, (s_gateway, s_oif, s_weight) in enumerate(left):
            if (
                s_gateway == gateway
                and (oif is None or s_oif == oif)
                and (not weights or s_weight == weight)
            ):
                del left[i]
                break
        else:
            return False
    return True


def _matches(hops: Sequence[Hop], seen: list[_Seen]) -> bool:
    if len(seen) != 1:  # absent, or ambiguous duplicates
        return False
    (route,) = seen
    multipath = len(hops) > 1
    if route.type != RTN_UNICAST or route.multipath != multipath:
        return False
    return _same_hops(hops, route.hops, weights=multipath)  # a plain route has no weight


def _request(route: _Route, hops: Sequence[Hop]) -> dict[str, Any]:
    spec = route.specs[0]
    net = _network(spec)
    req: dict[str, Any] = {
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "table": route.key[1],
        "type": RTN_UNICAST,
        "proto": "static",
    }
    if spec.metric is not None:
        req["priority"] = spec.metric
    if len(hops) > 1:
        req["multipath"] = [_nexthop(hop) for hop in hops]
        return req
    gateway, oif, _ = hops[0]
    if gateway is not None:
        req["gateway"] = gateway
    elif net.version == 4:
        req["scope"] = RT_SCOPE_LINK  # as `ip route ... dev X` does
    if oif is not None:
        req["oif"] = oif
    return req


def _nexthop(hop: Hop) -> dict[str, Any]:
    gateway, oif, weight = hop
    nh: dict[str, Any] = {"hops": weight - 1}
    if gateway is not None:
        nh["gateway"] = gateway
    if oif is not None:
        nh["oif"] = oif
    return nh


class NetlinkActuator:
    kind = "netlink"
    reads_before_write = True  # apply() dumps and writes only what differs

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
        self._known = self._routes.keys()
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

    def _paths(self, group: str, value: str) -> list[str]:
        """The governed paths of a desired value, in preference order."""
        return [p for p in dict.fromkeys(value.split("+")) if (group, p) in self._known]

    def _wanted_routes(self, desired: Mapping[str, str]) -> list[_Route]:
        wanted: list[_Route] = []
        for group, value in desired.items():
            by_key: dict[RouteKey, list[RouteSpec]] = {}
            for path in self._paths(group, value):
                for spec in self._routes.get((group, path), ()):
                    by_key.setdefault(route_key(spec), []).append(spec)
            wanted += [_Route(group, key, _merge(specs)) for key, specs in by_key.items()]
        return wanted

    async def apply(self, desired: Mapping[str, str]) -> bool:
        routes = self._wanted_routes(desired)
        if not routes:
            return False
        failures: list[str] = []
        failed: set[str] = set()
        wrote = False
        async with self._session("apply") as ipr:
            seen = await self._dump(ipr, routes)
            for route in routes:
                try:
                    hops = await self._hops(ipr, route)
                    if _matches(hops, seen.get(route.key, [])):
                        continue  # already right: no write, no notification
                    log.info("%s: replace %s", self.name, _describe(route))
                    await ipr.route("replace", **_request(route, hops))
                    wrote = True
                except ActuatorError as e:
                    failures.append(f"{_describe(route)}: {e.message}")
                    failed.add(route.group)
                except NetlinkError as e:
                    failures.append(f"replace {_describe(route)}: {_nl_text(e)}")
                    failed.add(route.group)
        if failures:
            msg = f"{self.name}{self._where()}: " + "; ".join(failures)
            raise ActuatorError("netlink", msg, frozenset(failed))
        return wrote

    async def verify(self, desired: Mapping[str, str]) -> bool:
        routes = self._wanted_routes(desired)
        if not routes:
            return True
        async with self._session("verify") as ipr:
            seen = await self._dump(ipr, routes)
            for route in routes:
                try:
                    hops = await self._hops(ipr, route)
                except ActuatorError:
                    return False  # an interface is missing
                if not _matches(hops, seen.get(route.key, [])):
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

    async def _hops(self, ipr: Any, route: _Route) -> list[Hop]:
        hops: list[Hop] = []
        for spec in route.specs:
            oif = None
            if spec.dev is not None:
                found = await ipr.link_lookup(ifname=spec.dev)
                if not found:
                    raise ActuatorError("netlink", f"interface {spec.dev!r} not found")
                oif = int(found[0])
            hops.append((_ip(spec.gateway), oif, spec.weight))
        return hops

    async def _dump(self, ipr: Any, routes: list[_Route]) -> dict[RouteKey, list[_Seen]]:
        msgs: list[Any] = []
        for v6 in sorted({":" in r.key[0] for r in routes}):
            af = socket.AF_INET6 if v6 else socket.AF_INET
            msgs += [msg async for msg in await ipr.route("dump", family=af)]
        return _collect(msgs)


def _nl_text(e: NetlinkError) -> str:
    return str(e.args[1]) if len(e.args) > 1 else str(e)
