"""NetlinkActuator against real kernel routing in throw-away network namespaces.

Lab: a "pbx" namespace with one veth to carrier A (192.0.2.0/30, 2001:db8:a::/64)
and one to carrier B (198.51.100.0/30, 2001:db8:b::/64).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.lib.core import routes as want
from tests.lib.netns import Netns, namespaces, veth
from tests.lib.reports import Reports
from trunkguard.act.base import Actuator, ActuatorError
from trunkguard.act.converge import Converger
from trunkguard.act.netlink import (
    NetlinkActuator,
    RouteSpec,
    RuleSpec,
    _collect,
    route_key,
    rule_key,
)

pytestmark = pytest.mark.integration

WAIT = 5.0  # safety net only: every wait below ends on an event
PREFIX = "203.0.113.0/24"
PREFIX6 = "2001:db8:ff::/48"
GW_A, GW_B = "192.0.2.2", "198.51.100.2"
GW6_A, GW6_B = "2001:db8:a::2", "2001:db8:b::2"


@dataclass
class Lab:
    pbx: Netns
    if_a: str
    if_b: str

    def routes(self, *args: str, v6: bool = False) -> list[dict[str, Any]]:
        fam = ["-6"] if v6 else []
        out = self.pbx.ip(*fam, "-j", "route", "show", *args).stdout
        return list(json.loads(out or "[]"))

    def rules(self, v6: bool = False) -> set[str]:
        """Every rule but the kernel's own, as "priority [not] from src [iif I] [oif O]
        lookup table"."""
        out = self.pbx.ip("-6" if v6 else "-4", "-j", "rule", "show").stdout
        found = set()
        for r in json.loads(out):
            if r["priority"] in (0, 32766, 32767):
                continue
            src = f"{r['src']}/{r['srclen']}" if "srclen" in r else r["src"]
            neg = " not" if "not" in r else ""
            dev = "".join(f" {d} {r[d]}" for d in ("iif", "oif") if d in r)
            found.add(f"{r['priority']}{neg} from {src}{dev} lookup {r['table']}")
        return found

    def gateway_for(self, dst: str, src: str, v6: bool = False) -> str:
        """The kernel's own answer: where a packet from src to dst goes."""
        out = self.pbx.ip("-6" if v6 else "-4", "-j", "route", "get", dst, "from", src).stdout
        (route,) = json.loads(out)
        return str(route["gateway"])

    def actuator(self, table: int | None = None, metric: int | None = None) -> NetlinkActuator:
        def spec(dst: str, gw: str) -> RouteSpec:
            return RouteSpec(dst, gateway=gw, table=table, metric=metric)

        return NetlinkActuator(
            "routes",
            {
                ("carriers", "A"): [spec(PREFIX, GW_A), spec(PREFIX6, GW6_A)],
                ("carriers", "B"): [spec(PREFIX, GW_B), spec(PREFIX6, GW6_B)],
            },
            netns=self.pbx.name,
        )


@pytest.fixture
def lab() -> Iterator[Lab]:
    with namespaces("pbx", "ca", "cb") as (pbx, ca, cb):
        if_a, peer_a = veth(pbx, "192.0.2.1/30", ca, "192.0.2.2/30")
        if_b, peer_b = veth(pbx, "198.51.100.1/30", cb, "198.51.100.2/30")
        for ns, dev, addr in [
            (pbx, if_a, "2001:db8:a::1/64"),
            (ca, peer_a, "2001:db8:a::2/64"),
            (pbx, if_b, "2001:db8:b::1/64"),
            (cb, peer_b, "2001:db8:b::2/64"),
        ]:
            ns.ip("-6", "addr", "add", addr, "dev", dev, "nodad")
        yield Lab(pbx, if_a, if_b)


@asynccontextmanager
async def actuator(act: NetlinkActuator) -> AsyncIterator[NetlinkActuator]:
    try:
        yield act
    finally:
        await act.close()


@asynccontextmanager
async def converging(act: Actuator, **kw: float) -> AsyncIterator[tuple[Converger, Reports]]:
    reports = Reports()
    conv = Converger(act, on_report=reports, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(conv.run())
    try:
        yield conv, reports
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class RouteMonitor:
    """`ip monitor route` (and rule) in the namespace, fenced by marker routes so
    that we know exactly which events happened between two points."""

    def __init__(self, ns: Netns, *, rules: bool = False) -> None:
        self.ns = ns
        self.objects = ["route", "rule"] if rules else ["route"]
        self.n = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> RouteMonitor:
        self.proc = await asyncio.create_subprocess_exec(
            "ip", "-n", self.ns.name, "monitor", *self.objects, stdout=asyncio.subprocess.PIPE
        )
        try:
            await self._handshake()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def _handshake(self) -> None:
        # ip monitor subscribes a little after it starts and says nothing: add
        # markers until one comes back. Events are ordered, so from then on
        # nothing can be missed.
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    async with asyncio.timeout(0.2):
                        await self.mark()
                    return
                except TimeoutError:
                    continue

    async def mark(self) -> list[str]:
        """Route events since the previous mark, in order."""
        assert self.proc is not None and self.proc.stdout is not None
        self.n += 1
        assert self.n < 128
        marker = f"192.0.2.{128 + self.n} "
        self.ns.ip("route", "add", marker.strip(), "dev", "lo", "table", "4242")
        lines: list[str] = []
        async with asyncio.timeout(WAIT):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "ip monitor ended"
                if line.startswith(marker) and "table 4242" in line:
                    return lines
                lines.append(line.strip())


def gateways(lab: Lab, *args: str, v6: bool = False) -> list[str | None]:
    return [r.get("gateway") for r in lab.routes(*args, v6=v6)]


async def test_switch_from_carrier_a_to_b(lab: Lab) -> None:
    async with actuator(lab.actuator()) as act, converging(act) as (conv, reports):
        conv.set_desired(want({"carriers": "A", "unrelated": "X"}))
        r = await reports.wait(lambda r: r.ok)
        assert r.changed
        (route,) = lab.routes(PREFIX)
        assert route["gateway"] == GW_A and route["dev"] == lab.if_a
        assert route["protocol"] == "static"
        assert gateways(lab, PREFIX6, v6=True) == [GW6_A]

        conv.set_desired(want({"carriers": "B"}))
        r = await reports.wait(lambda r: str(r.desired.get("carriers")) == "B")
        assert r.ok and r.changed and conv.converged
        (route,) = lab.routes(PREFIX)
        assert route["gateway"] == GW_B and route["dev"] == lab.if_b
        assert gateways(lab, PREFIX6, v6=True) == [GW6_B]


async def test_replace_is_atomic(lab: Lab) -> None:
    async with actuator(lab.actuator()) as act:
        await act.apply(want({"carriers": "A"}))
        async with RouteMonitor(lab.pbx) as mon:
            await act.apply(want({"carriers": "B"}))
            events = await mon.mark()
        assert await act.verify(want({"carriers": "B"}))
    ours = [e for e in events if e.split()[0] in ("203.0.113.0/24", "2001:db8:ff::/48")]
    assert any(e.startswith(f"{PREFIX} via {GW_B}") for e in ours), events
    assert any(e.startswith(f"{PREFIX6} via {GW6_B}") for e in ours), events
    assert not [e for e in events if e.startswith("Deleted")], events


async def test_applying_the_same_state_twice_is_a_noop(lab: Lab) -> None:
    async with actuator(lab.actuator()) as act:
        await act.apply(want({"carriers": "A"}))
        async with RouteMonitor(lab.pbx) as mon:
            await act.apply(want({"carriers": "A"}))  # apply itself writes nothing
            assert await mon.mark() == []
            # A restarted daemon (fresh socket, fresh converger) does not touch it.
            async with actuator(lab.actuator()) as again, converging(again) as (conv, reports):
                conv.set_desired(want({"carriers": "A"}))
                r = await reports.wait(lambda r: True)
            assert r.ok and not r.changed
            assert await mon.mark() == []
    assert gateways(lab, PREFIX) == [GW_A]


async def test_drift_is_restored(lab: Lab) -> None:
    async with (
        actuator(lab.actuator()) as act,
        converging(act, drift_interval=0.05) as (
            conv,
            reports,
        ),
    ):
        conv.set_desired(want({"carriers": "A"}))
        await reports.wait(lambda r: r.ok)

        lab.pbx.ip("route", "replace", PREFIX, "via", GW_B)  # an operator's hand
        r = await reports.wait(lambda r: r.trigger == "drift")
        assert r.ok and r.changed
        assert gateways(lab, PREFIX) == [GW_A]

        lab.pbx.ip("route", "del", PREFIX)  # as the kernel does when a link goes
        again = await reports.wait(lambda x: x.trigger == "drift" and x is not r)
        assert again.ok and again.changed
        assert gateways(lab, PREFIX) == [GW_A]


async def test_routing_table_other_than_main(lab: Lab) -> None:
    async with actuator(lab.actuator(table=100)) as act:
        await act.apply(want({"carriers": "B"}))
        assert await act.verify(want({"carriers": "B"}))
        assert not await act.verify(want({"carriers": "A"}))
    assert gateways(lab, "table", "100", PREFIX) == [GW_B]
    assert gateways(lab, "table", "100", PREFIX6, v6=True) == [GW6_B]
    assert lab.routes(PREFIX) == []  # main untouched


async def test_metric_is_part_of_the_identity(lab: Lab) -> None:
    # Someone else's route to the same prefix with another metric is not ours.
    lab.pbx.ip("route", "add", PREFIX, "via", GW_B, "metric", "100")
    async with actuator(lab.actuator(metric=50)) as act:
        await act.apply(want({"carriers": "A"}))
        assert await act.verify(want({"carriers": "A"}))
        lab.pbx.ip("route", "replace", PREFIX, "via", GW_A, "metric", "100")
        assert await act.verify(want({"carriers": "A"}))
    by_metric = {r.get("metric"): r["gateway"] for r in lab.routes(PREFIX)}
    assert by_metric == {50: GW_A, 100: GW_A}


async def test_dev_only_routes(lab: Lab) -> None:
    routes = {
        ("g", "A"): [RouteSpec(PREFIX, dev=lab.if_a)],
        ("g", "B"): [RouteSpec(PREFIX, dev=lab.if_b)],
    }
    async with actuator(NetlinkActuator("r", routes, netns=lab.pbx.name)) as act:
        await act.apply(want({"g": "A"}))
        assert await act.verify(want({"g": "A"})) and not await act.verify(want({"g": "B"}))
        await act.apply(want({"g": "B"}))
        assert await act.verify(want({"g": "B"}))
    (route,) = lab.routes(PREFIX)
    assert route["dev"] == lab.if_b and "gateway" not in route and route["scope"] == "link"


async def test_gateway_and_dev_must_both_match(lab: Lab) -> None:
    spec = RouteSpec(PREFIX, gateway=GW_A, dev=lab.if_a)
    async with actuator(NetlinkActuator("r", {("g", "A"): [spec]}, netns=lab.pbx.name)) as act:
        await act.apply(want({"g": "A"}))
        assert await act.verify(want({"g": "A"}))
        lab.pbx.ip("route", "replace", PREFIX, "dev", lab.if_b)
        assert not await act.verify(want({"g": "A"}))
        lab.pbx.ip("route", "replace", "blackhole", PREFIX)
        assert not await act.verify(want({"g": "A"}))
        await act.apply(want({"g": "A"}))
        assert await act.verify(want({"g": "A"}))


async def test_missing_interface_is_a_clear_error(lab: Lab) -> None:
    spec = RouteSpec(PREFIX, gateway=GW_A, dev="nosuch0")
    async with actuator(NetlinkActuator("r", {("g", "A"): [spec]}, netns=lab.pbx.name)) as act:
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"g": "A"}))
        assert not await act.verify(want({"g": "A"}))
    assert err.value.reason == "netlink"
    assert "'nosuch0' not found" in str(err.value) and PREFIX in str(err.value)
    assert lab.routes(PREFIX) == []


async def test_kernel_refusal_does_not_stop_other_routes(lab: Lab) -> None:
    routes = {
        ("g", "A"): [RouteSpec("198.51.100.128/25", gateway="192.0.2.99")],  # not on-link
        ("h", "A"): [RouteSpec(PREFIX, gateway=GW_A)],
    }
    async with actuator(NetlinkActuator("r", routes, netns=lab.pbx.name)) as act:
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"g": "A", "h": "A"}))
    assert err.value.reason == "netlink" and "unreachable" in str(err.value)
    assert gateways(lab, PREFIX) == [GW_A]


async def test_missing_namespace_is_an_error_and_not_created() -> None:
    name = "tg-absent-ns"
    act = NetlinkActuator("r", {("g", "A"): [RouteSpec(PREFIX, gateway=GW_A)]}, netns=name)
    async with actuator(act):
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"g": "A"}))
    assert err.value.reason == "netlink" and name in str(err.value)
    ip = await asyncio.create_subprocess_exec("ip", "netns", "list", stdout=subprocess.PIPE)
    listed, _ = await ip.communicate()
    assert name.encode() not in listed


async def test_socket_reopens_after_close(lab: Lab) -> None:
    async with actuator(lab.actuator()) as act:
        await act.apply(want({"carriers": "A"}))
        await act.close()
        assert await act.verify(want({"carriers": "A"}))
        await act.apply(want({"carriers": "B"}))
    assert gateways(lab, PREFIX) == [GW_B]


async def test_ungoverned_groups_and_paths_are_ignored(lab: Lab) -> None:
    async with actuator(lab.actuator()) as act:
        assert await act.verify(want({}))
        assert await act.verify(want({"other": "A", "carriers": "Z"}))
        await act.apply(want({"other": "A", "carriers": "Z"}))
    assert lab.routes(PREFIX) == []


def test_route_key_and_validation() -> None:
    assert route_key(RouteSpec(PREFIX, gateway=GW_A)) == (PREFIX, 254, 0)
    assert route_key(RouteSpec(PREFIX6, gateway=GW6_A)) == (PREFIX6, 254, 1024)
    assert route_key(RouteSpec("default", gateway=GW6_A, table=7, metric=5)) == ("::/0", 7, 5)
    assert route_key(RouteSpec("default", dev="eth0")) == ("0.0.0.0/0", 254, 0)
    assert route_key(RouteSpec(PREFIX, gateway=GW_A, weight=256)) == (PREFIX, 254, 0)
    for bad in [
        dict(dst=PREFIX),
        dict(dst="203.0.113.1/24", gateway=GW_A),
        dict(dst=PREFIX, gateway=GW6_A),
        dict(dst=PREFIX, dev="x" * 16),
        dict(dst=PREFIX, dev="eth0", table=0),
        dict(dst=PREFIX, gateway=GW_A, weight=0),
        dict(dst=PREFIX, gateway=GW_A, weight=257),
    ]:
        with pytest.raises(ValueError):
            RouteSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups"):
        NetlinkActuator(
            "r",
            {
                ("g", "A"): [RouteSpec(PREFIX, gateway=GW_A)],
                ("h", "A"): [RouteSpec(PREFIX, gateway=GW_B)],
            },
        )


# Weighted multipath: a desired value "A+B" merges the paths' routes per key.


def nexthops(route: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(nh["gateway"], nh["dev"], nh["weight"]) for nh in route.get("nexthops", [])}


def weighted(lab: Lab) -> NetlinkActuator:
    return NetlinkActuator(
        "routes",
        {
            ("carriers", "A"): [
                RouteSpec(PREFIX, GW_A, lab.if_a, weight=3),
                RouteSpec(PREFIX6, GW6_A, lab.if_a, weight=3),
            ],
            ("carriers", "B"): [RouteSpec(PREFIX, GW_B, lab.if_b), RouteSpec(PREFIX6, GW6_B)],
        },
        netns=lab.pbx.name,
    )


async def test_multipath_with_weights_and_back_without_a_gap(lab: Lab) -> None:
    async with actuator(weighted(lab)) as act:
        await act.apply(want({"carriers": "A"}))
        async with RouteMonitor(lab.pbx) as mon:
            assert await act.apply(want({"carriers": "A+B"}))
            to_multipath = await mon.mark()
            (route,) = lab.routes(PREFIX)
            assert nexthops(route) == {(GW_A, lab.if_a, 3), (GW_B, lab.if_b, 1)}
            assert "gateway" not in route
            (route6,) = lab.routes(PREFIX6, v6=True)
            assert nexthops(route6) == {(GW6_A, lab.if_a, 3), (GW6_B, lab.if_b, 1)}
            assert await act.verify(want({"carriers": "A+B"}))
            assert await act.verify(
                want({"carriers": "B+A"})
            )  # preference order is not the kernel's
            assert not await act.verify(want({"carriers": "A"}))
            assert not await act.verify(want({"carriers": "B"}))

            assert await act.apply(want({"carriers": "B+A"})) is False  # same nexthops: no write
            assert await mon.mark() == []

            assert await act.apply(want({"carriers": "B"}))
            to_plain = await mon.mark()
        assert await act.verify(want({"carriers": "B"}))
        assert not await act.verify(want({"carriers": "A+B"}))
    (route,) = lab.routes(PREFIX)
    assert route["gateway"] == GW_B and "nexthops" not in route
    assert gateways(lab, PREFIX6, v6=True) == [GW6_B]
    for events in (to_multipath, to_plain):
        assert [e for e in events if e.startswith(PREFIX)], events
        assert [e for e in events if e.startswith(PREFIX6)], events
        assert not [e for e in events if e.startswith("Deleted")], events


async def test_multipath_drift_is_repaired(lab: Lab) -> None:
    desired = want({"carriers": "A+B"})
    hands = [
        ("route", "replace", PREFIX, "via", GW_A),  # down to one nexthop
        ("route", "replace", PREFIX, "nexthop", "via", GW_A, "nexthop", "via", GW_B),  # weights
        ("route", "replace", PREFIX, "nexthop", "via", GW_A, "weight", "3"),  # kernel: plain
        ("-6", "route", "replace", PREFIX6, "via", GW6_A),
        (
            "-6",
            "route",
            "replace",
            PREFIX6,
            "nexthop",
            "via",
            GW6_A,
            "dev",
            lab.if_a,
            "weight",
            "3",
            "nexthop",
            "via",
            GW6_B,
            "dev",
            lab.if_b,
            "weight",
            "2",
        ),
        ("route", "del", PREFIX),
    ]
    async with actuator(weighted(lab)) as act:
        await act.apply(desired)
        for hand in hands:
            lab.pbx.ip(*hand)
            assert not await act.verify(desired), hand
            assert await act.apply(desired), hand
            assert await act.verify(desired), hand
    (route,) = lab.routes(PREFIX)
    assert nexthops(route) == {(GW_A, lab.if_a, 3), (GW_B, lab.if_b, 1)}
    (route6,) = lab.routes(PREFIX6, v6=True)
    assert nexthops(route6) == {(GW6_A, lab.if_a, 3), (GW6_B, lab.if_b, 1)}


async def test_multipath_through_the_converger(lab: Lab) -> None:
    async with (
        actuator(weighted(lab)) as act,
        converging(act, drift_interval=0.05) as (
            conv,
            reports,
        ),
    ):
        conv.set_desired(want({"carriers": "A+B"}))
        first = await reports.wait(lambda r: r.ok)
        assert first.changed and conv.converged
        lab.pbx.ip("route", "replace", PREFIX, "via", GW_B)  # an operator's hand
        r = await reports.wait(lambda r: r.trigger == "drift")
        assert r.ok and r.changed
    (route,) = lab.routes(PREFIX)
    assert nexthops(route) == {(GW_A, lab.if_a, 3), (GW_B, lab.if_b, 1)}


async def test_multipath_merges_per_key_and_shared_nexthops(lab: Lab) -> None:
    extra = "198.18.0.0/15"
    routes = {
        ("g", "A"): [
            RouteSpec(PREFIX, GW_A, weight=2),
            RouteSpec(PREFIX6, GW6_A, weight=2),
            RouteSpec(extra, GW_A),  # only A routes it: stays a plain route
        ],
        ("g", "B"): [RouteSpec(PREFIX, GW_B), RouteSpec(PREFIX6, GW6_B)],
        # C shares A's next hop: the kernel refuses duplicate IPv6 nexthops, so the
        # two are one nexthop carrying both weights.
        ("g", "C"): [RouteSpec(PREFIX, GW_A), RouteSpec(PREFIX6, GW6_A)],
    }
    async with actuator(NetlinkActuator("r", routes, netns=lab.pbx.name)) as act:
        assert await act.apply(want({"g": "A+B+C"}))
        assert await act.verify(want({"g": "A+B+C"}))
        (route,) = lab.routes(PREFIX)
        assert nexthops(route) == {(GW_A, lab.if_a, 3), (GW_B, lab.if_b, 1)}
        (route6,) = lab.routes(PREFIX6, v6=True)
        assert nexthops(route6) == {(GW6_A, lab.if_a, 3), (GW6_B, lab.if_b, 1)}
        assert gateways(lab, extra) == [GW_A]

        # All that is left after merging is one next hop: a plain route.
        assert await act.apply(want({"g": "C+A"}))
        assert await act.verify(want({"g": "C+A"}))
        assert gateways(lab, PREFIX) == [GW_A]
        assert gateways(lab, PREFIX6, v6=True) == [GW6_A]

        # A path this actuator does not govern is ignored within a "+" value.
        await act.apply(want({"g": "B+Z"}))
        assert await act.verify(want({"g": "B+Z"})) and await act.verify(want({"g": "B"}))
        assert gateways(lab, PREFIX) == [GW_B]


def test_ipv6_multipath_as_older_kernels_dump_it() -> None:
    # Before Linux 4.11 each nexthop of an IPv6 multipath route came as a route of
    # its own; this kernel sends RTA_MULTIPATH, so feed _collect such a dump.
    def msg(family: int, dst: str, **kw: Any) -> dict[str, Any]:
        base = {"family": family, "tos": 0, "dst": dst, "table": 254, "type": 1}
        return base | kw

    v6 = dict(dst_len=48, priority=1024)
    v4 = dict(dst_len=24, priority=0)
    seen = _collect(
        [
            msg(10, "2001:db8:ff::", gateway=GW6_A, oif=2, **v6),
            msg(10, "2001:db8:ff::", gateway=GW6_B, oif=3, **v6),
            msg(2, "203.0.113.0", gateway=GW_A, oif=2, **v4),  # IPv4: `ip route append`
            msg(2, "203.0.113.0", gateway=GW_B, oif=3, **v4),
        ]
    )
    (route6,) = seen[(PREFIX6, 254, 1024)]
    assert route6.multipath and set(route6.hops) == {(GW6_A, 2, 1), (GW6_B, 3, 1)}
    assert [r.multipath for r in seen[(PREFIX, 254, 0)]] == [False, False]  # ambiguous


# Policy routing rules: a path's rules are added before the old path's go.

SRC, SRC6 = "192.0.2.0/24", "2001:db8:a::/64"  # the pbx's own addresses on link A
HOST, HOST6 = "203.0.113.5", "2001:db8:ff::5"


def policy(
    lab: Lab,
    routes: dict[tuple[str, str], list[RouteSpec]] | None = None,
    rules: dict[tuple[str, str], list[RuleSpec]] | None = None,
) -> NetlinkActuator:
    """Path A routes through table 100, B through table 200; a rule picks the table."""

    def via(dst: str, gateway: str, table: int) -> RouteSpec:
        return RouteSpec(dst, gateway, table=table)

    return NetlinkActuator(
        "policy",
        {
            ("carriers", "A"): [via(PREFIX, GW_A, 100), via(PREFIX6, GW6_A, 100)],
            ("carriers", "B"): [via(PREFIX, GW_B, 200), via(PREFIX6, GW6_B, 200)],
        }
        | (routes or {}),
        {
            ("carriers", "A"): [RuleSpec(1000, 100, src=SRC), RuleSpec(1000, 100, src=SRC6)],
            ("carriers", "B"): [RuleSpec(1000, 200, src=SRC), RuleSpec(1000, 200, src=SRC6)],
        }
        | (rules or {}),
        netns=lab.pbx.name,
    )


async def test_rules_switch_make_before_break(lab: Lab) -> None:
    # Someone else's rules: one before ours, one at our priority and table.
    lab.pbx.ip("rule", "add", "priority", "900", "from", SRC, "lookup", "300")
    lab.pbx.ip("rule", "add", "priority", "1000", "from", "198.51.100.0/24", "lookup", "100")
    theirs = {f"900 from {SRC} lookup 300", "1000 from 198.51.100.0/24 lookup 100"}
    async with actuator(policy(lab)) as act:
        assert await act.apply(want({"carriers": "A"}))
        assert lab.rules() == theirs | {f"1000 from {SRC} lookup 100"}
        assert lab.rules(v6=True) == {f"1000 from {SRC6} lookup 100"}
        assert lab.gateway_for(HOST, "192.0.2.1") == GW_A
        assert lab.gateway_for(HOST6, "2001:db8:a::1", v6=True) == GW6_A
        assert await act.verify(want({"carriers": "A"})) and not await act.verify(
            want({"carriers": "B"})
        )

        async with RouteMonitor(lab.pbx, rules=True) as mon:
            assert await act.apply(want({"carriers": "B"}))
            events = await mon.mark()
            assert await act.apply(want({"carriers": "B"})) is False
            assert await mon.mark() == []
        assert await act.verify(want({"carriers": "B"})) and not await act.verify(
            want({"carriers": "A"})
        )
        assert lab.rules() == theirs | {f"1000 from {SRC} lookup 200"}
        assert lab.rules(v6=True) == {f"1000 from {SRC6} lookup 200"}
        assert lab.gateway_for(HOST, "192.0.2.1") == GW_B
        assert lab.gateway_for(HOST6, "2001:db8:a::1", v6=True) == GW6_B

        assert await act.apply(want({"carriers": "A"}))
        assert lab.rules() == theirs | {f"1000 from {SRC} lookup 100"}
        assert lab.gateway_for(HOST, "192.0.2.1") == GW_A

    routed = [i for i, e in enumerate(events) if e.startswith(f"{PREFIX} via {GW_B}")]
    added = [i for i, e in enumerate(events) if e.startswith("1000:") and "lookup 200" in e]
    deleted = [i for i, e in enumerate(events) if e.startswith("Deleted")]
    assert len(routed) == 1 and len(added) == 2 and len(deleted) == 2, events
    # Routes into the new table, then its rules, and only then the old rules go.
    assert routed[0] < min(added) and max(added) < min(deleted), events
    assert all("lookup 100" in events[i] and "198.51.100" not in events[i] for i in deleted)


async def test_rules_union_for_multipath_and_paths_without_rules(lab: Lab) -> None:
    act = policy(
        lab,
        routes={("carriers", "M"): [RouteSpec(PREFIX, GW_B)]},  # main table, no rules
        rules={("carriers", "N"): []},  # governed here, wants no rules
    )
    async with actuator(act):
        await act.apply(want({"carriers": "A+B"}))
        assert lab.rules() == {f"1000 from {SRC} lookup 100", f"1000 from {SRC} lookup 200"}
        assert await act.verify(want({"carriers": "B+A"})) and not await act.verify(
            want({"carriers": "A"})
        )

        assert await act.apply(want({"carriers": "M"}))
        assert lab.rules() == set() and lab.rules(v6=True) == set()
        assert gateways(lab, PREFIX) == [GW_B]

        await act.apply(want({"carriers": "A"}))
        assert await act.apply(want({"carriers": "Z"})) is False  # not governed: left alone
        assert await act.verify(want({"carriers": "Z"}))
        assert lab.rules() == {f"1000 from {SRC} lookup 100"}

        assert await act.apply(want({"carriers": "N"}))
        assert lab.rules() == set() and await act.verify(want({"carriers": "N"}))


async def test_rule_changed_by_hand_is_restored(lab: Lab) -> None:
    desired = want({"carriers": "A"})
    async with actuator(policy(lab)) as act:
        await act.apply(desired)
        lab.pbx.ip("rule", "del", "priority", "1000", "from", SRC, "lookup", "100")
        assert not await act.verify(desired)
        assert await act.apply(desired)
        assert await act.verify(desired)
        assert lab.rules() == {f"1000 from {SRC} lookup 100"}

        # A rule of path B put back by hand is the group's, so it goes again.
        lab.pbx.ip("-6", "rule", "add", "priority", "1000", "from", SRC6, "lookup", "200")
        assert not await act.verify(desired)
        assert await act.apply(desired)
        assert await act.verify(desired)
        assert lab.rules(v6=True) == {f"1000 from {SRC6} lookup 100"}


async def test_rule_delete_that_would_hit_someone_elses_rule_is_refused(lab: Lab) -> None:
    # The kernel deletes the first rule having the selectors a request gives, so
    # deleting "1000 from SRC lookup 100" would take this one, which comes first.
    lab.pbx.ip("rule", "add", "priority", "1000", "from", SRC, "iif", "lo", "lookup", "100")
    other = {
        ("other", "X"): [RuleSpec(2000, 300, dst=PREFIX)],
        ("other", "Y"): [RuleSpec(2000, 400, dst=PREFIX)],
    }
    async with actuator(policy(lab, rules=other)) as act:
        await act.apply(want({"carriers": "A", "other": "X"}))
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"carriers": "B", "other": "Y"}))
        assert err.value.groups == {"carriers"}
        assert f"'1000: from {SRC} iif lo lookup 100' first" in err.value.message
        assert not await act.verify(want({"carriers": "B"})) and await act.verify(
            want({"other": "Y"})
        )
        assert lab.rules() == {
            f"1000 from {SRC} iif lo lookup 100",  # untouched
            f"1000 from {SRC} lookup 100",  # still there: refused
            f"1000 from {SRC} lookup 200",  # made before the break that did not come
            "2000 from all lookup 400",  # the other group switched regardless
        }
        assert lab.rules(v6=True) == {f"1000 from {SRC6} lookup 200"}

        lab.pbx.ip("rule", "del", "priority", "1000", "from", SRC, "iif", "lo", "lookup", "100")
        assert await act.apply(want({"carriers": "B", "other": "Y"}))
        assert lab.rules() == {f"1000 from {SRC} lookup 200", "2000 from all lookup 400"}


async def test_rules_with_more_selectors_are_not_ours(lab: Lab) -> None:
    async with actuator(policy(lab)) as act:
        await act.apply(want({"carriers": "A"}))
        # Same identity fields as A's rule, plus an oif: someone else's. It comes
        # after ours, so deleting ours cannot take it.
        lab.pbx.ip("rule", "add", "priority", "1000", "from", SRC, "oif", lab.if_b, "lookup", "100")
        theirs = f"1000 from {SRC} oif {lab.if_b} lookup 100"
        assert await act.apply(want({"carriers": "B"}))
        assert await act.verify(want({"carriers": "B"}))
        assert lab.rules() == {theirs, f"1000 from {SRC} lookup 200"}
        assert await act.apply(want({"carriers": "A"}))  # not taken for ours: ours is added
        assert lab.rules() == {theirs, f"1000 from {SRC} lookup 100"}


async def test_rule_add_refused_by_the_kernel_breaks_nothing(lab: Lab) -> None:
    async with actuator(policy(lab)) as act:
        await act.apply(want({"carriers": "A"}))
        # The kernel's duplicate check ignores "not" (but not the protocol): adding
        # B's rule is refused.
        lab.pbx.ip(
            "rule",
            "add",
            "priority",
            "1000",
            "not",
            "from",
            SRC,
            "lookup",
            "200",
            "proto",
            "static",
        )
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"carriers": "B"}))
        assert err.value.groups == {"carriers"} and "File exists" in err.value.message
        assert not await act.verify(want({"carriers": "B"}))
    # Nothing of the group was deleted: A's rules still steer (IPv6's B rule is in too).
    assert lab.rules() == {f"1000 from {SRC} lookup 100", f"1000 not from {SRC} lookup 200"}
    assert lab.rules(v6=True) == {f"1000 from {SRC6} lookup 100", f"1000 from {SRC6} lookup 200"}
    assert lab.gateway_for(HOST, "192.0.2.1") == GW_A


async def test_failed_routes_keep_the_groups_rules(lab: Lab) -> None:
    broken = {("carriers", "B"): [RouteSpec(PREFIX, GW_B, "nosuch0", table=200)]}
    async with actuator(policy(lab, routes=broken)) as act:
        await act.apply(want({"carriers": "A"}))
        with pytest.raises(ActuatorError) as err:
            await act.apply(want({"carriers": "B"}))
        assert err.value.groups == {"carriers"} and "'nosuch0' not found" in err.value.message
    # Traffic stays on A's table rather than on a table without its routes.
    assert lab.rules() == {f"1000 from {SRC} lookup 100"}
    assert lab.gateway_for(HOST, "192.0.2.1") == GW_A


async def test_rule_selectors_read_back(lab: Lab) -> None:
    rules = {
        ("g", "A"): [
            RuleSpec(1100, 70000, dst=PREFIX, fwmark=0x10, iif=lab.if_a),  # table > 255
            RuleSpec(1100, 70000, fwmark=0x10, family=6),
            RuleSpec(1200, 300, iif="tgnosuch0"),  # detached until the link appears
        ],
        ("g", "B"): [RuleSpec(1100, 70001, fwmark=0x10, family=6)],
    }
    act = NetlinkActuator("r", {}, rules, netns=lab.pbx.name)
    async with actuator(act):
        assert await act.apply(want({"g": "A"}))
        assert await act.verify(want({"g": "A"})) and not await act.verify(want({"g": "B"}))
        assert await act.apply(want({"g": "A"})) is False
        assert lab.rules() == {
            f"1100 from all iif {lab.if_a} lookup 70000",
            "1200 from all iif tgnosuch0 lookup 300",
        }
        assert lab.rules(v6=True) == {"1100 from all lookup 70000"}
        assert await act.apply(want({"g": "B"}))
        assert lab.rules() == set() and lab.rules(v6=True) == {"1100 from all lookup 70001"}


def test_rule_key_and_validation() -> None:
    assert rule_key(RuleSpec(1000, 100, src=SRC6)) == (6, 1000, 100, SRC6, None, None, None)
    assert rule_key(RuleSpec(1, 7, dst="0.0.0.0/0", fwmark=7, iif="eth0")) == (
        4,
        1,
        7,
        None,
        None,
        7,
        "eth0",
    )
    assert rule_key(RuleSpec(32765, 2**32 - 1, family=6))[:3] == (6, 32765, 2**32 - 1)
    for bad in [
        dict(priority=0, table=100),
        dict(priority=32766, table=100),
        dict(priority=32767, table=100),
        dict(priority=40000, table=100),
        dict(priority=1000, table=0),
        dict(priority=1000, table=2**32),
        dict(priority=1000, table=100, src="192.0.2.1/24"),
        dict(priority=1000, table=100, src="nonsense"),
        dict(priority=1000, table=100, src=SRC, dst=PREFIX6),
        dict(priority=1000, table=100, src=SRC, family=6),
        dict(priority=1000, table=100, family=5),
        dict(priority=1000, table=100, fwmark=0),
        dict(priority=1000, table=100, iif="x" * 16),
    ]:
        with pytest.raises(ValueError) as err:
            RuleSpec(**bad)  # type: ignore[arg-type]
        assert "\n" not in str(err.value) and "rule" in str(err.value)
    with pytest.raises(ValueError, match="groups"):
        NetlinkActuator(
            "r", {}, {("g", "A"): [RuleSpec(1000, 100)], ("h", "A"): [RuleSpec(1000, 100)]}
        )
    with pytest.raises(ValueError, match="twice"):
        NetlinkActuator("r", {}, {("g", "A"): [RuleSpec(1000, 100), RuleSpec(1000, 100)]})
