"""Kernel routes and policy rules as an actuator: each (group, path) maps to a set
of routes and a set of rules.

Routes are installed with an atomic RTM_NEWROUTE replace (NLM_F_CREATE |
NLM_F_REPLACE), never delete-then-add, so no packet ever meets a missing route.
A route is identified the way the kernel does it: (prefix, table, metric).

A group's desired value may list several paths in preference order (a multipath
group): the routes of the listed paths that share a key become one weighted
multipath route. Rules cannot be replaced in place, so a switch adds the new
rules before it deletes the old ones: traffic is never without a rule. A rule is
identified by (family, priority, table, src, dst, fwmark, iif); a rule that is no
group's is never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import create_socket

from trunkguard.act.base import ActuatorError, Desired
from trunkguard.core.ids import Paths
from trunkguard.obs.logging import get_logger

log = get_logger(__name__)

MAIN_TABLE = 254
RTN_UNICAST = 1
RTPROT_STATIC = 4
RT_SCOPE_LINK = 253
IP6_RT_PRIO_USER = 1024  # the kernel's metric for an IPv6 route given 0/none
MAX_WEIGHT = 256  # rtnh_hops is a byte holding weight - 1
FR_ACT_TO_TBL = 1
FIB_RULE_IIF_DETACHED = 0x8  # status, not configuration: the iif does not exist (yet)
U32_MAX = 2**32 - 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RouteKey = tuple[str, int, int]
# One nexthop: (gateway, oif, weight); a wanted oif of None matches any interface.
Hop = tuple[str | None, int | None, int]
# A rule's identity: (family 4/6, priority, table, src, dst, fwmark, iif).
RuleKey = tuple[int, int, int, str | None, str | None, int | None, str | None]
RuleGroups = dict[RuleKey, str]  # rule -> the group it belongs to


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


@dataclass(frozen=True)
class RuleSpec:
    """One policy routing rule: `from src to dst fwmark M iif I lookup table` at
    `priority`. family is 4 or 6; None means the addresses' family (IPv4 if none)."""

    priority: int
    table: int
    src: str | None = None
    dst: str | None = None
    fwmark: int | None = None
    iif: str | None = None
    family: int | None = None

    def __post_init__(self) -> None:
        what = f"rule {self.priority}"
        # 0, 32766 and 32767 are the kernel's local, main and default rules.
        if not 0 < self.priority < 32766:
            raise ValueError(f"{what}: priority must be 1..32765")
        if not 0 < self.table <= U32_MAX:
            raise ValueError(f"{what}: table must be 1..4294967295")
        if self.family not in (None, 4, 6):
            raise ValueError(f"{what}: family must be 4 or 6")
        versions = {self.family} - {None}
        for addr in (self.src, self.dst):
            if addr is not None:
                try:
                    versions.add(ipaddress.ip_network(addr).version)
                except ValueError as e:  # host bits set, not an address, ...
                    raise ValueError(f"{what}: {e}") from None
        if len(versions) > 1:
            raise ValueError(f"{what}: src, dst and family disagree on the address family")
        if self.fwmark is not None and not 0 < self.fwmark <= U32_MAX:
            raise ValueError(f"{what}: fwmark must be 1..4294967295")
        if self.iif is not None and not _ifname_ok(self.iif):
            raise ValueError(f"{what}: bad interface name {self.iif!r}")


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


def rule_key(spec: RuleSpec) -> RuleKey:
    """A rule's identity as read back: (family, priority, table, src, dst, fwmark, iif)."""
    nets = [ipaddress.ip_network(a) for a in (spec.src, spec.dst) if a is not None]
    family = spec.family or (nets[0].version if nets else 4)
    return (
        family,
        spec.priority,
        spec.table,
        _selector(spec.src),
        _selector(spec.dst),
        spec.fwmark,
        spec.iif,
    )


def _selector(prefix: str | None) -> str | None:
    # The kernel keeps no "from 0.0.0.0/0": a /0 is "from all", like no prefix.
    if prefix is None:
        return None
    net = ipaddress.ip_network(prefix, strict=False)
    return str(net) if net.prefixlen else None


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


@dataclass(frozen=True)
class _SeenRule:
    key: RuleKey
    plain: bool  # says nothing a RuleSpec cannot say; otherwise it is never ours


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


def _describe_rule(key: RuleKey) -> str:
    family, priority, table, src, dst, fwmark, iif = key
    parts = [f"{priority}: from {src or 'all'}"]
    if dst:
        parts.append(f"to {dst}")
    if fwmark is not None:
        parts.append(f"fwmark {fwmark:#x}")
    if iif:
        parts.append(f"iif {iif}")
    parts.append(f"lookup {table}")
    if family == 6 and not (src or dst):
        parts.append("(IPv6)")
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
        if (
            ":" in key[0]
            and len(entries) > 1
            and all(e.type == RTN_UNICAST and not e.multipath and e.hops[0][0] for e in entries)
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


# Rule attributes a RuleSpec can produce, and the others' values meaning "unset".
_RULE_ATTRS = {
    "FRA_TABLE",
    "FRA_PRIORITY",
    "FRA_SRC",
    "FRA_DST",
    "FRA_FWMARK",
    "FRA_IIFNAME",
    "FRA_PROTOCOL",
}
_RULE_UNSET = {
    "FRA_FWMASK": U32_MAX,
    "FRA_SUPPRESS_PREFIXLEN": U32_MAX,
    "FRA_SUPPRESS_IFGROUP": U32_MAX,
}


def _seen_rule(msg: Any) -> _SeenRule:
    def selector(name: str) -> str | None:
        addr, length = msg.get(name), msg[f"{name}_len"]
        return str(ipaddress.ip_network(f"{addr}/{length}", strict=False)) if addr else None

    key: RuleKey = (
        6 if msg["family"] == socket.AF_INET6 else 4,
        int(msg.get("priority") or 0),
        int(msg.get("table") or msg["table"]),  # FRA_TABLE: the header has 8 bits
        selector("src"),
        selector("dst"),
        msg.get("fwmark"),
        msg.get("iifname"),
    )
    # Anything else (not, oif, tos, goto, uidrange, ports, a mark mask, ...) makes
    # it another rule, even if its identity fields equal one of ours.
    plain = (
        msg["action"] == FR_ACT_TO_TBL
        and not msg["tos"]
        and not msg["flags"] & ~FIB_RULE_IIF_DETACHED
        and all(nla[0] in _RULE_ATTRS or _RULE_UNSET.get(nla[0]) == nla[1] for nla in msg["attrs"])
    )
    return _SeenRule(key, plain)


def _hits(key: RuleKey, other: RuleKey) -> bool:
    """Whether a delete request for `key` may remove `other`: the kernel removes the
    first rule that has the selectors the request gives, whatever else it has.
    Errs on the side of yes (mark masks, actions), which only refuses a delete."""
    return key[:3] == other[:3] and all(
        k is None or k == o for k, o in zip(key[3:], other[3:], strict=True)
    )


def _rule_request(key: RuleKey) -> dict[str, Any]:
    family, priority, table, src, dst, fwmark, iif = key
    req: dict[str, Any] = {
        "family": socket.AF_INET6 if family == 6 else socket.AF_INET,
        "priority": priority,
        "table": table,
        "action": "to_tbl",
    }
    for name, prefix in (("src", src), ("dst", dst)):
        if prefix is not None:
            net = ipaddress.ip_network(prefix)
            req[name] = str(net.network_address)
            req[f"{name}_len"] = net.prefixlen
    if fwmark is not None:
        req["fwmark"] = fwmark  # the kernel makes the mask 0xffffffff
    if iif is not None:
        req["iifname"] = iif
    return req


class NetlinkActuator:
    kind = "netlink"
    reads_before_write = True  # apply() dumps and writes only what differs

    def __init__(
        self,
        name: str,
        routes: Mapping[tuple[str, str], Sequence[RouteSpec]],
        rules: Mapping[tuple[str, str], Sequence[RuleSpec]] | None = None,
        *,
        netns: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """A (group, path) listed in `routes` or `rules`, even with no entries, is
        governed here: switching to it removes the group's other paths' rules. A
        desired path listed in neither leaves the group as it is."""
        self.name = name
        self._routes = {gp: tuple(specs) for gp, specs in routes.items()}
        self._rules = {gp: tuple(specs) for gp, specs in (rules or {}).items()}
        self._known = self._routes.keys() | self._rules.keys()
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
        # Every rule of any path of a group is the group's to add and delete.
        self._managed: dict[str, set[RuleKey]] = {}
        rule_owner: dict[RuleKey, str] = {}
        for (group, path), rule_specs in self._rules.items():
            rkeys = [rule_key(s) for s in rule_specs]
            if len(set(rkeys)) != len(rkeys):
                raise ValueError(f"{name}: {group}/{path} lists one rule twice")
            for rkey in rkeys:
                if rule_owner.setdefault(rkey, group) != group:
                    raise ValueError(
                        f"{name}: rule {_describe_rule(rkey)} is in groups "
                        f"{rule_owner[rkey]} and {group}"
                    )
                self._managed.setdefault(group, set()).add(rkey)

    def _paths(self, group: str, value: Paths) -> list[str]:
        """The governed paths of a desired value, in preference order."""
        return [p for p in value if (group, p) in self._known]

    def _wanted_routes(self, desired: Desired) -> list[_Route]:
        wanted: list[_Route] = []
        for group, value in desired.items():
            by_key: dict[RouteKey, list[RouteSpec]] = {}
            for path in self._paths(group, value):
                for spec in self._routes.get((group, path), ()):
                    by_key.setdefault(route_key(spec), []).append(spec)
            wanted += [_Route(group, key, _merge(specs)) for key, specs in by_key.items()]
        return wanted

    def _wanted_rules(self, desired: Desired) -> tuple[RuleGroups, RuleGroups]:
        """(wanted, unwanted): rule -> group, for the groups in `desired` that have rules."""
        wanted: RuleGroups = {}
        unwanted: RuleGroups = {}
        for group, value in desired.items():
            paths = self._paths(group, value)
            if not paths or group not in self._managed:
                continue
            want = {rule_key(s) for p in paths for s in self._rules.get((group, p), ())}
            wanted.update(dict.fromkeys(want, group))
            unwanted.update(dict.fromkeys(self._managed[group] - want, group))
        return wanted, unwanted

    async def apply(self, desired: Desired) -> bool:
        routes = self._wanted_routes(desired)
        wanted, unwanted = self._wanted_rules(desired)
        if not routes and not wanted and not unwanted:
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
                    log.info("route replace", actuator=self.name, route=_describe(route))
                    await ipr.route("replace", **_request(route, hops))
                    wrote = True
                except ActuatorError as e:
                    failures.append(f"{_describe(route)}: {e.message}")
                    failed.add(route.group)
                except NetlinkError as e:
                    failures.append(f"replace {_describe(route)}: {_nl_text(e)}")
                    failed.add(route.group)
            # A group whose routes failed keeps its rules as they are: pointing traffic
            # at a table that lacks its routes is worse than the old path.
            if wanted or unwanted:
                wrote |= await self._apply_rules(
                    ipr,
                    {k: g for k, g in wanted.items() if g not in failed},
                    {k: g for k, g in unwanted.items() if g not in failed},
                    failures,
                    failed,
                )
        if failures:
            msg = f"{self.name}{self._where()}: " + "; ".join(failures)
            raise ActuatorError("netlink", msg, frozenset(failed))
        return wrote

    async def _apply_rules(
        self,
        ipr: Any,
        wanted: RuleGroups,
        unwanted: RuleGroups,
        failures: list[str],
        failed: set[str],
    ) -> bool:
        families = {k[0] for k in wanted.keys() | unwanted.keys()}
        rules = await self._dump_rules(ipr, families)
        present = {r.key for r in rules if r.plain}
        added = False
        for key, group in wanted.items():
            if key in present:
                continue
            try:
                log.info("rule add", actuator=self.name, rule=_describe_rule(key))
                await ipr.rule("add", protocol=RTPROT_STATIC, **_rule_request(key))
                added = True
            except NetlinkError as e:
                failures.append(f"add rule '{_describe_rule(key)}': {_nl_text(e)}")
                failed.add(group)
        # Make before break: only now the old rules go, and not in a group whose new
        # rule could not be added.
        doomed = [k for k, g in unwanted.items() if k in present and g not in failed]
        deleted = False
        for key in doomed:
            group = unwanted[key]
            # The kernel deletes the first rule the request matches, which may be
            # someone else's. The dump from before the adds still tells which: a new
            # rule goes after every rule of its priority or lower.
            first = next(r for r in rules if _hits(key, r.key))
            if first.key != key or not first.plain:
                other = _describe_rule(first.key) + ("" if first.plain else " (and more)")
                failures.append(
                    f"delete rule '{_describe_rule(key)}' refused: the kernel would delete"
                    f" '{other}' first"
                )
                failed.add(group)
                continue
            try:
                log.info("rule delete", actuator=self.name, rule=_describe_rule(key))
                await ipr.rule("del", **_rule_request(key))
                deleted = True
            except NetlinkError as e:
                if e.code != errno.ENOENT:  # gone meanwhile is what we wanted
                    failures.append(f"delete rule '{_describe_rule(key)}': {_nl_text(e)}")
                    failed.add(group)
                    continue
            rules.remove(first)
        return added or deleted

    async def verify(self, desired: Desired) -> bool:
        routes = self._wanted_routes(desired)
        wanted, unwanted = self._wanted_rules(desired)
        if not routes and not wanted and not unwanted:
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
            if wanted or unwanted:
                families = {k[0] for k in wanted.keys() | unwanted.keys()}
                present = {r.key for r in await self._dump_rules(ipr, families) if r.plain}
                return wanted.keys() <= present and not unwanted.keys() & present
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
            create_socket,
            self._netns,
            socket.AF_NETLINK,
            socket.SOCK_DGRAM,
            NETLINK_ROUTE,
            flags=0,
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

    async def _dump_rules(self, ipr: Any, families: set[int]) -> list[_SeenRule]:
        """In the kernel's list order, which is the order deletes search in."""
        rules: list[_SeenRule] = []
        for family in sorted(families):
            af = socket.AF_INET6 if family == 6 else socket.AF_INET
            rules += [_seen_rule(msg) async for msg in await ipr.rule("dump", family=af)]
        return rules


def _nl_text(e: NetlinkError) -> str:
    return str(e.args[1]) if len(e.args) > 1 else str(e)
