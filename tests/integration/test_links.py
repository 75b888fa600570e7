"""LinkWatcher against real kernel links in throw-away network namespaces.

Lab: namespace "host" (where the watcher looks) joined by a veth to "peer", which
plays the gateway: host 192.0.2.2/24 + 2001:db8::2/64, peer 192.0.2.1/24 + 2001:db8::1/64.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import structlog
from structlog.testing import CapturingLogger

from tests.lib.netns import Netns, namespaces, run, unique, veth
from trunkguard.watch import links
from trunkguard.watch.links import LinkSpec, LinkWatcher

pytestmark = pytest.mark.integration

WAIT = 5.0  # safety net only: every wait below ends on an event
GW, ADDR = "192.0.2.1", "192.0.2.2"
GW6, ADDR6 = "2001:db8::1", "2001:db8::2"

Event = tuple[str, bool, str, float]


@dataclass
class Lab:
    host: Netns
    peer: Netns
    dev: str  # host side of the veth
    peer_dev: str


@pytest.fixture
def lab() -> Iterator[Lab]:
    with namespaces("host", "peer") as (host, peer):
        dev, peer_dev = veth(host, f"{ADDR}/24", peer, f"{GW}/24")
        # Keep IPv6 addresses across admin down (the kernel's default drops them).
        host.sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.keep_addr_on_down=1")
        host.ip("-6", "addr", "add", f"{ADDR6}/64", "dev", dev, "nodad")
        peer.ip("-6", "addr", "add", f"{GW6}/64", "dev", peer_dev, "nodad")
        yield Lab(host, peer, dev, peer_dev)


class Events:
    """on_change calls, awaited one by one through a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []

    def __call__(self, name: str, up: bool, reason: str, at: float) -> None:
        self.queue.put_nowait((name, up, reason, at))

    async def next(self, name: str | None = None) -> Event:
        """The next event (for `name`, skipping other links')."""
        async with asyncio.timeout(WAIT):
            while True:
                ev = await self.queue.get()
                self.seen.append(ev)
                if name is None or ev[0] == name:
                    return ev

    async def expect(self, name: str, up: bool, reason: str) -> Event:
        """The very next event for `name` must be this one."""
        ev = await self.next(name)
        assert ev[1:3] == (up, reason), self.seen
        return ev

    async def until(self, name: str, up: bool, reason: str) -> Event:
        """Events for `name` until this one (a link may pass through other states first)."""
        try:
            while True:
                ev = await self.next(name)
                if ev[1:3] == (up, reason):
                    return ev
        except TimeoutError:
            raise AssertionError(f"no {(name, up, reason)} in {self.seen}") from None

    async def initial(self, n: int) -> dict[str, tuple[bool, str]]:
        got = [await self.next() for _ in range(n)]
        states = {name: (up, reason) for name, up, reason, _ in got}
        assert len(states) == n, got  # exactly one initial report per link
        return states

    def assert_quiet(self) -> None:
        assert self.queue.empty(), [self.queue.get_nowait() for _ in range(self.queue.qsize())]


@asynccontextmanager
async def watching(
    specs: list[LinkSpec], netns: str, **kw: object
) -> AsyncIterator[tuple[LinkWatcher, Events]]:
    events = Events()
    watcher = LinkWatcher(specs, events, netns=netns, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher, events
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # run() ends only by cancellation, never by its own exception


def operstate(ns: Netns, dev: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", "dev", dev).stdout)[0]["operstate"]).lower()


def send_udp(ns: Netns, ip: str) -> None:
    """One datagram to ip (starts neighbour resolution); nothing needs to listen."""
    code = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    code += "s.sendto(b'x', (sys.argv[1], 9))"
    ns.sh(sys.executable, "-c", code, ip)


async def test_initial_state_then_admin_down_and_up(lab: Lab) -> None:
    missing = unique("m")
    specs = [
        LinkSpec("uplink", lab.dev, gateway=GW, address=ADDR),
        LinkSpec("uplink6", lab.dev, gateway=GW6),
        LinkSpec("spare", missing),
    ]
    async with watching(specs, lab.host.name) as (watcher, events):
        assert await events.initial(3) == {
            "uplink": (True, "up"),
            "uplink6": (True, "up"),
            "spare": (False, f"interface {missing} missing"),
        }
        assert watcher.status() == {
            "uplink": (True, "up"),
            "uplink6": (True, "up"),
            "spare": (False, f"interface {missing} missing"),
        }
        lab.host.ip("link", "set", "dev", lab.dev, "down")
        await events.expect("uplink", False, f"{lab.dev} administratively down")
        await events.expect("uplink6", False, f"{lab.dev} administratively down")
        lab.host.ip("link", "set", "dev", lab.dev, "up")
        await events.until("uplink", True, "up")
        await events.until("uplink6", True, "up")
        assert watcher.status()["uplink"] == (True, "up")


async def test_carrier_loss_from_the_peer_side(lab: Lab) -> None:
    spec = LinkSpec("uplink", lab.dev, gateway=GW, address=ADDR)
    async with watching([spec], lab.host.name) as (_, events):
        await events.expect("uplink", True, "up")
        lab.peer.ip("link", "set", "dev", lab.peer_dev, "down")
        # The kernel says "lowerlayerdown" for a veth unless both ends have the same
        # ifindex (each in its own namespace), then "down"; the reason must say what it says.
        _, _, reason, _ = await events.next("uplink")
        assert reason == f"{lab.dev} no carrier (operstate {operstate(lab.host, lab.dev)})"
        assert operstate(lab.host, lab.dev) in ("lowerlayerdown", "down")
        lab.peer.ip("link", "set", "dev", lab.peer_dev, "up")
        await events.expect("uplink", True, "up")


async def test_latency_from_ip_link_set_to_on_change(lab: Lab) -> None:
    """Printed, not asserted: `ip` runs while the loop is blocked, so this is the time
    from `ip` returning (the notification already queued on our socket) to on_change."""
    spec = LinkSpec("uplink", lab.dev, down_when=frozenset({"admin"}))
    samples = []
    async with watching([spec], lab.host.name) as (_, events):
        await events.expect("uplink", True, "up")
        for i in range(20):
            state, up, reason = (
                ("down", False, f"{lab.dev} administratively down")
                if i % 2 == 0
                else ("up", True, "up")
            )
            lab.host.ip("link", "set", "dev", lab.dev, state)
            returned = time.monotonic()
            _, _, _, at = await events.expect("uplink", up, reason)
            samples.append(at - returned)
    ms = sorted(s * 1000 for s in samples)
    print(
        f"\nlink watcher latency, `ip link set` returned -> on_change ({len(ms)} samples): "
        f"median {statistics.median(ms):.3f} ms, max {ms[-1]:.3f} ms"
    )


async def test_address_removed_and_restored(lab: Lab) -> None:
    specs = [
        LinkSpec("pinned", lab.dev, gateway=GW, address=ADDR),
        LinkSpec("v6", lab.dev, gateway=GW6),
    ]
    async with watching(specs, lab.host.name) as (_, events):
        await events.initial(2)
        lab.host.ip("addr", "del", f"{ADDR}/24", "dev", lab.dev)
        await events.expect("pinned", False, f"address {ADDR} removed from {lab.dev}")
        lab.host.ip("addr", "add", f"{ADDR}/24", "dev", lab.dev)
        await events.expect("pinned", True, "up")

        # Without a pinned address: the last global address of the gateway's family
        # going away is what counts; the link-local fe80:: left behind does not.
        lab.host.ip("-6", "addr", "del", f"{ADDR6}/64", "dev", lab.dev)
        await events.expect("v6", False, f"no IPv6 address on {lab.dev}")
        lab.host.ip("-6", "addr", "add", f"{ADDR6}/64", "dev", lab.dev, "nodad")
        await events.expect("v6", True, "up")
        events.assert_quiet()


async def test_gateway_neighbour_failure_and_recovery(lab: Lab) -> None:
    for knob, value in [("mcast_solicit", "1"), ("ucast_solicit", "1"), ("retrans_time_ms", "100")]:
        lab.host.sh("sysctl", "-qw", f"net.ipv4.neigh.{lab.dev}.{knob}={value}")
    spec = LinkSpec("uplink", lab.dev, gateway=GW, address=ADDR)
    async with watching([spec], lab.host.name) as (_, events):
        await events.expect("uplink", True, "up")
        lab.peer.ip("addr", "del", f"{GW}/24", "dev", lab.peer_dev)
        send_udp(lab.host, GW)  # ARP goes unanswered: incomplete, then failed
        await events.expect("uplink", False, f"gateway {GW} unreachable (neighbour failed)")

        lab.peer.ip("addr", "add", f"{GW}/24", "dev", lab.peer_dev)
        send_udp(lab.host, GW)  # resolution starts again and is answered
        await events.expect("uplink", True, "up")
    out = lab.host.ip("neigh", "show", GW, "dev", lab.dev).stdout
    assert "REACHABLE" in out or "DELAY" in out or "STALE" in out, out


async def test_interface_created_later_and_recreated(lab: Lab) -> None:
    dev, other = unique("n"), unique("o")
    spec = LinkSpec("late", dev, address="198.51.100.2")
    async with watching([spec], lab.host.name) as (_, events):
        await events.expect("late", False, f"interface {dev} missing")
        for _ in range(2):  # the second time it comes back under a new ifindex
            lab.host.ip("link", "add", dev, "type", "veth", "peer", "name", other)
            await events.expect("late", False, f"{dev} administratively down")
            lab.host.ip("addr", "add", "198.51.100.2/24", "dev", dev)
            lab.host.ip("link", "set", other, "up")
            lab.host.ip("link", "set", dev, "up")
            await events.until("late", True, "up")
            lab.host.ip("link", "del", dev)  # the kernel reports it down before it goes
            await events.until("late", False, f"interface {dev} missing")


async def test_interface_renamed_into_and_out_of_the_watched_name(lab: Lab) -> None:
    dev, spare, other = unique("w"), unique("s"), unique("o")
    lab.host.ip("link", "add", spare, "type", "veth", "peer", "name", other)
    lab.host.ip("addr", "add", "198.51.100.2/24", "dev", spare)
    lab.host.ip("link", "set", other, "up")
    spec = LinkSpec("renamed", dev, address="198.51.100.2")
    async with watching([spec], lab.host.name) as (_, events):
        await events.expect("renamed", False, f"interface {dev} missing")
        lab.host.ip("link", "set", spare, "name", dev)  # same ifindex, addresses and all
        await events.expect("renamed", False, f"{dev} administratively down")
        lab.host.ip("link", "set", dev, "up")
        await events.until("renamed", True, "up")
        lab.host.ip("link", "set", dev, "down")
        await events.expect("renamed", False, f"{dev} administratively down")
        lab.host.ip("link", "set", dev, "name", spare)
        await events.expect("renamed", False, f"interface {dev} missing")


async def test_overrun_is_recovered_by_a_resync(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny receive buffer and a burst while the loop is blocked: the kernel drops
    notifications (ENOBUFS); the watcher reopens, re-dumps and still sees the link down."""
    monkeypatch.setattr(links, "RCVBUF", 1)  # the kernel's minimum, a few KiB
    logger = CapturingLogger()
    log = structlog.wrap_logger(
        logger, processors=[], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    spec = LinkSpec("uplink", lab.dev, gateway=GW, address=ADDR)
    async with watching([spec], lab.host.name, log=log) as (watcher, events):
        await events.expect("uplink", True, "up")
        burst = "".join(f"addr add 2001:db8:1::{i:x}/128 dev {lab.dev} nodad\n" for i in range(300))
        # Blocking call on purpose: the loop cannot read while the kernel keeps sending.
        burst += f"link set dev {lab.dev} down\n"
        run("ip", "-n", lab.host.name, "-batch", "-", input=burst)
        await events.expect("uplink", False, f"{lab.dev} administratively down")
        warnings = [c for c in logger.calls if c.method_name == "warning"]
        assert warnings, logger.calls
        assert warnings[0].kwargs["error"].startswith("[Errno 105]"), warnings
        assert "resyncing" in warnings[0].kwargs["event"]
        lab.host.ip("link", "set", "dev", lab.dev, "up")
        await events.until("uplink", True, "up")
        assert watcher.status() == {"uplink": (True, "up")}


async def test_unusable_namespace_reports_unknown_and_never_raises() -> None:
    spec = LinkSpec("uplink", "eth1")
    async with watching([spec], f"{unique('gone')}-none") as (watcher, events):
        name, up, reason, _ = await events.next()
        assert (name, up) == ("uplink", False)
        assert reason.startswith("link state unknown (netlink: "), reason
        assert watcher.status()["uplink"] == (False, reason)
