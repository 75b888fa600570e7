"""The shipped mosquitto configs (configs/mosquitto/) in a bridged lab: a hub and site
brokers in their own namespaces (tests/lib/sites.py). What crosses the bridges (retained,
expiry, wills), what the ACLs stop, and how mosquitto 2.0.11 behaves when the path to the
hub dies silently or the hub restarts. Findings are printed (pytest -s) and asserted.

Negative checks never sleep: a "fence" message sent after the thing that must not arrive
travels the same path, so once the fence is in, the thing would have been too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.lib.sites import Sites, sites

pytestmark = pytest.mark.integration

WAIT = 10.0  # safety net for one awaited message


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Sites]:
    with sites(tmp_path) as s:
        yield s


class Inbox:
    """Messages received by one subscribed client, collected in the background."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.msgs: list[aiomqtt.Message] = []
        self._new = asyncio.Event()

    async def run(self) -> None:
        async for msg in self.client.messages:
            self.msgs.append(msg)
            self._new.set()

    async def wait(
        self, topic: str, payload: bytes | None = None, within: float = WAIT, since: int = 0
    ) -> aiomqtt.Message:
        """The first message (already received or not, from msgs[since]) on topic [with
        payload]."""
        async with asyncio.timeout(within):
            seen = since
            while True:
                for m in self.msgs[seen:]:
                    if m.topic.matches(topic) and payload in (None, m.payload):
                        return m
                seen = len(self.msgs)
                self._new.clear()
                await self._new.wait()

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.msgs if m.topic.matches(topic)]


@asynccontextmanager
async def inbox(
    lab: Sites, where: str, *filters: str, user: str | None = None
) -> AsyncIterator[Inbox]:
    async with lab.client(where, user=user) as c:
        box = Inbox(c)
        task = asyncio.create_task(box.run())
        try:
            for f in filters:
                await c.subscribe(f, qos=1)
            yield box
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def retained(lab: Sites, where: str, topic: str, fence: str) -> aiomqtt.Message | None:
    """What a NEW subscriber gets retained on `topic` (None: nothing). `fence` must be a
    retained topic of that broker: subscribed after `topic`, its message comes after any
    retained message of `topic`."""
    async with inbox(lab, where, topic, fence) as box:
        await box.wait(fence)
        got = [m for m in box.on(topic) if m.retain]
        return got[-1] if got else None


def expiry(seconds: int = 3) -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.MessageExpiryInterval = seconds
    return p


def expiry_of(msg: aiomqtt.Message) -> int | None:
    return getattr(msg.properties, "MessageExpiryInterval", None)


async def heartbeats(pub: aiomqtt.Client, topic: str) -> None:
    """What an agent does: a retained heartbeat every second that expires after 3 s."""
    n = 0
    while True:
        n += 1
        await pub.publish(topic, str(n).encode(), qos=1, retain=True, properties=expiry())
        await asyncio.sleep(1)  # the heartbeat's period, not a synchronisation


async def gone(lab: Sites, where: str, topic: str, fence: str, t0: float) -> float:
    """Seconds from t0 until a new subscriber at `where` gets nothing retained on topic."""
    while await retained(lab, where, topic, fence) is not None:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # polling a state that only the clock changes
    return time.monotonic() - t0


def since(t: float | None, t0: float) -> str:
    return "never" if t is None else f"{t - t0:.1f} s"


def wait_log(log: Path, offset: int, text: str, timeout: float) -> float | None:
    """time.monotonic() when `text` shows in the log after offset (None: not in time)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_bytes()[offset:].decode(errors="replace"):
            return time.monotonic()
        time.sleep(0.1)
    return None


async def test_retained_and_live_messages_cross_the_hub(lab: Sites) -> None:
    status = "trunkguard/site-a/n1/status"
    async with (
        inbox(lab, "site-b", "trunkguard/site-a/n1/#") as live_b,
        lab.client("site-a") as pub,
    ):
        await pub.publish(status, b"online", qos=1, retain=True)
        await pub.publish("trunkguard/site-a/n1/events", b"e1", qos=1)
        live = await live_b.wait(status, b"online")
        event = await live_b.wait("trunkguard/site-a/n1/events", b"e1")
        # An ordinary subscription gets live messages with retain 0, even retained ones.
        assert (live.retain, event.retain) == (False, False)
    # Subscribed after publication: from site-b's own retained store, flagged retained.
    for where in ("site-b", "hub"):
        async with inbox(lab, where, status) as late:
            msg = await late.wait(status)
            assert (msg.payload, msg.retain) == (b"online", True), where


async def test_no_loops_each_message_once_at_every_site(tmp_path: Path) -> None:
    with sites(tmp_path, witness="site-w") as lab:
        async with (
            inbox(lab, "site-a", "trunkguard/#") as at_a,
            inbox(lab, "site-b", "trunkguard/#") as at_b,
            inbox(lab, "site-w", "trunkguard/#") as at_w,
            lab.client("site-a") as pub_a,
            lab.client("site-b") as pub_b,
        ):
            for i in range(5):
                await pub_a.publish("trunkguard/site-a/n1/events", f"{i}".encode(), qos=1)
            await pub_a.publish("trunkguard/site-a/n1/state", b"s", qos=1, retain=True)
            # rebirth: site-b asks a site-a node; out of site-b, into site-a (and all).
            await pub_b.publish("trunkguard/site-a/n1/rebirth", b"please", qos=1)
            await pub_a.publish("trunkguard/site-a/n1/fence", b"f", qos=1)
            for box in (at_a, at_b, at_w):
                await box.wait("trunkguard/site-a/n1/fence")
            # A loop would bring copies back after the originals: let a full round trip
            # through the hub, both ways and for every site, come after them.
            await asyncio.gather(*(lab.bridge_connected(s) for s in lab.names))
            for name, box in (("site-a", at_a), ("site-b", at_b), ("site-w", at_w)):
                events = [m.payload for m in box.on("trunkguard/site-a/n1/events")]
                assert events == [b"0", b"1", b"2", b"3", b"4"], name
                assert len(box.on("trunkguard/site-a/n1/state")) == 1, name
                assert len(box.on("trunkguard/site-a/n1/rebirth")) == 1, name


async def test_message_expiry_crosses_the_bridges(lab: Sites) -> None:
    hb = "trunkguard/site-a/n1/heartbeat"
    fence = "trunkguard/site-b/n1/fence"
    async with lab.client("site-b") as b:
        await b.publish(fence, b"f", qos=1, retain=True)
    async with inbox(lab, "site-b", hb) as live_b, lab.client("site-a") as pub:
        t0 = time.monotonic()
        await pub.publish(hb, b"1", qos=1, retain=True, properties=expiry(seconds=2))
        frac = time.time() % 1
        live = await live_b.wait(hb)
    kept = await retained(lab, "site-b", hb, fence)
    assert kept is not None and kept.payload == b"1"
    # Expired: a new subscriber at site-b gets nothing. Time must pass for that: poll.
    async with asyncio.timeout(5):
        gone_after = await gone(lab, "site-b", hb, fence, t0)
    print(
        f"\nexpiry 2 s at site-a: live copy at site-b MessageExpiryInterval={expiry_of(live)},"
        f" retained copy at site-b MessageExpiryInterval={expiry_of(kept)},"
        f" gone for new subscribers at site-b after {gone_after:.2f} s"
        f" (published {frac:.2f} s into a wall-clock second)"
    )
    assert expiry_of(live) in (1, 2) and expiry_of(kept) in (1, 2)
    assert 0.9 < gone_after < 4
    assert await retained(lab, "hub", hb, fence) is None


async def test_last_will_of_a_killed_client_crosses(lab: Sites) -> None:
    a = lab["site-a"]
    status, ping = "trunkguard/site-a/w1/status", "trunkguard/site-a/w1/ping"
    async with lab.client("site-a") as pub:
        await pub.publish(ping, b"ping", qos=1, retain=True)
    argv = a.ns.exec_argv(
        "mosquitto_sub", "-h", a.host, "-p", str(a.port), "-V", "mqttv5",
        "-u", a.agent_user, "-P", a.agent_password, "-i", "tg-will-w1", "-q", "1", "-t", ping,
        "--will-topic", status, "--will-payload", "offline", "--will-retain", "--will-qos", "1",
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            assert await proc.stdout.readline() == b"ping\n"  # connected and subscribed
        async with inbox(lab, "site-b", status) as live_b:
            os.kill(proc.pid, signal.SIGKILL)
            will = await live_b.wait(status, b"offline")
            assert not will.retain
    finally:
        with suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    kept = await retained(lab, "site-b", status, "trunkguard/site-a/w1/ping")
    assert kept is not None and kept.payload == b"offline"


async def test_shipped_acls(lab: Sites) -> None:
    async with (
        inbox(lab, "site-b", "trunkguard/#") as at_b,
        inbox(lab, "site-a", "trunkguard/#") as at_a,
        lab.client("site-a") as agent_a,
        lab.client("site-a", user=lab.noc_user) as noc,
        lab.client("hub", user="site-a", password=lab.password("hub", "site-a")) as as_bridge,
    ):
        denied = [
            (agent_a, "trunkguard/site-b/n1/status"),  # another site's prefix
            (agent_a, "trunkguard/site-a/n1/cmd"),  # cmd, even under its own prefix
            (agent_a, "trunkguard/site-a/cmd"),
            (agent_a, "trunkguard/site-b/n1/cmd"),
            (noc, "trunkguard/site-a/n1/status"),  # the NOC sends commands only
            (as_bridge, "trunkguard/site-b/n1/status"),  # the hub: own prefix only
        ]
        for client, topic in denied:
            await client.publish(topic, b"forged", qos=1, retain=True)
        await agent_a.publish("trunkguard/site-b/n1/rebirth", b"please", qos=1)
        await noc.publish("trunkguard/site-a/n1/cmd", b"noc-cmd", qos=1)
        await as_bridge.publish("trunkguard/site-a/n2/state", b"via-hub", qos=1)
        await agent_a.publish("trunkguard/site-a/n1/fence", b"f", qos=1)
        await at_b.wait("trunkguard/site-a/n1/fence")
        await at_a.wait("trunkguard/site-a/n1/fence")
        assert (await at_b.wait("trunkguard/site-b/n1/rebirth")).payload == b"please"
        assert (await at_b.wait("trunkguard/site-a/n2/state")).payload == b"via-hub"
        # The agents read commands (the NOC's one reaches them); nobody saw a forgery.
        assert (await at_a.wait("trunkguard/site-a/n1/cmd")).payload == b"noc-cmd"
        for box in (at_b, at_a):
            assert not [m.topic.value for m in box.msgs if m.payload == b"forged"]
        # The NOC's commands for another site enter at the hub.
        async with lab.client("hub") as noc_hub:
            await noc_hub.publish("trunkguard/site-b/n1/cmd", b"to-b", qos=1)
            assert (await at_b.wait("trunkguard/site-b/n1/cmd")).payload == b"to-b"


async def test_blocked_bridge(lab: Sites) -> None:
    a = lab["site-a"]
    base = "trunkguard/site-a/n1"
    fence_b = "trunkguard/site-b/n1/fence"
    async with (
        inbox(lab, "site-b", f"{base}/#") as at_b,
        inbox(lab, "site-a", a.state_topic, user=lab.noc_user) as bridge_state,
        lab.client("site-a") as pub,
        lab.client("site-b") as pub_b,
    ):
        assert (await bridge_state.wait(a.state_topic)).payload == b"1"
        await pub_b.publish(fence_b, b"f", qos=1, retain=True)
        await pub.publish(f"{base}/status", b"online", qos=1, retain=True)
        await pub.publish(f"{base}/state", b"v1", qos=1, retain=True)
        await pub.publish(f"{base}/takeover/site-b", b"claim", qos=1, retain=True)
        beat = asyncio.create_task(heartbeats(pub, f"{base}/heartbeat"))
        try:
            await at_b.wait(f"{base}/heartbeat")
            hub_log = lab.hub.broker.log.stat().st_size
            site_log = a.broker.log.stat().st_size

            lab.block_bridge("site-a")
            t0 = time.monotonic()
            await pub.publish(f"{base}/state", b"v2", qos=1, retain=True)
            await pub.publish(f"{base}/trunks/1", b"up", qos=1, retain=True)
            await pub.publish(f"{base}/takeover/site-b", b"", qos=1, retain=True)  # clear
            await pub.publish(f"{base}/events", b"during-block", qos=1)
            # site-b's peers: the heartbeat expires, the retained status stays "online".
            hb_gone = asyncio.create_task(gone(lab, "site-b", f"{base}/heartbeat", fence_b, t0))
            while lab.bridge_established("site-a"):
                assert time.monotonic() - t0 < 15, "bridge never noticed the dead path"
                await asyncio.sleep(0.1)  # polling the kernel's socket table
            noticed = time.monotonic() - t0
            hb_gone_after = await hb_gone
            status = await retained(lab, "site-b", f"{base}/status", fence_b)
            assert status is not None and status.payload == b"online"
            retry_at, hub_at = await asyncio.gather(
                asyncio.to_thread(wait_log, a.broker.log, site_log, "Connecting bridge", 5),
                asyncio.to_thread(
                    wait_log, lab.hub.broker.log, hub_log, f"{a.bridge_id} has exceeded", 20
                ),
            )
            site_lines = a.broker.log.read_bytes()[site_log:].decode().splitlines()
            states = [m.payload for m in bridge_state.msgs]
            forwarded = [m.payload for m in at_b.msgs if not m.topic.matches(f"{base}/heartbeat")]

            lab.unblock_bridge("site-a")
            t1 = time.monotonic()
            await lab.bridge_connected("site-a")
            resumed = time.monotonic() - t1
            print(
                f"\nblocked bridge (keepalive 5 s): heartbeat gone at site-b after "
                f"{hb_gone_after:.1f} s (status still {status.payload!r}); site-a closed its "
                f"connection to the hub after {noticed:.1f} s, logged its first reconnection "
                f"attempt after {since(retry_at, t0)}; the hub dropped the bridge after "
                f"{since(hub_at, t0)}; "
                f"$SYS state at site-a while blocked: {states}; site-a log while blocked: "
                f"{site_lines}; flow resumed {resumed:.1f} s after unblock"
            )
            # While blocked nothing crossed; the state topic still said "connected".
            assert b"v2" not in forwarded and b"during-block" not in forwarded
            assert states == [b"1"]
            assert 4 <= noticed <= 12 and hb_gone_after < 4
            # Resync: retained messages published during the outage reach site-b...
            await at_b.wait(f"{base}/state", b"v2")
            await at_b.wait(f"{base}/trunks/1", b"up")
            await at_b.wait(f"{base}/heartbeat", since=len(at_b.msgs))
            await pub.publish(f"{base}/events", b"after", qos=1)
            await at_b.wait(f"{base}/events", b"after")
            # ...non-retained ones are lost (cleansession: nothing is queued for the hub).
            assert not [m for m in at_b.msgs if m.payload == b"during-block"]
            states_after = [m.payload for m in bridge_state.msgs]
            print(f"$SYS state at site-a after reconnection: {states_after}")
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat
    got_b = await retained(lab, "site-b", f"{base}/state", fence_b)
    assert got_b is not None and got_b.payload == b"v2"
    got_a = await retained(lab, "site-a", f"{base}/state", f"{base}/trunks/1")
    assert got_a is not None and got_a.payload == b"v2"  # no stale echo from the hub
    # A retained topic CLEARED during the outage stays at the hub and site-b: a resync
    # sends what the site has, and a cleared topic is nothing.
    stale = await retained(lab, "site-b", f"{base}/takeover/site-b", fence_b)
    assert stale is not None and stale.payload == b"claim"


async def test_hub_restart(lab: Sites) -> None:
    a = lab["site-a"]
    base = "trunkguard/site-a/n1"
    async with (
        inbox(lab, "site-b", f"{base}/#") as at_b,
        inbox(lab, "site-a", a.state_topic, user=lab.noc_user) as bridge_state,
        lab.client("site-a") as pub,
    ):
        await pub.publish(f"{base}/state", b"v1", qos=1, retain=True)
        await at_b.wait(f"{base}/state", b"v1")
        await bridge_state.wait(a.state_topic, b"1")
        site_log = a.broker.log.stat().st_size
        lab.restart_hub()
        t0 = time.monotonic()
        times = await asyncio.gather(*(lab.bridge_connected(s) for s in lab.names))
        await pub.publish(f"{base}/events", b"after-restart", qos=1)
        await at_b.wait(f"{base}/events", b"after-restart")
        states = [m.payload for m in bridge_state.msgs]
        print(
            f"\nhub restart: bridges carry messages again {max(times):.1f} s after the hub "
            f"was back; $SYS state at site-a: {states}; site-a log: "
            f"{a.broker.log.read_bytes()[site_log:].decode().splitlines()}"
        )
        assert time.monotonic() - t0 < 20
    # The hub's retained store was rebuilt from site-a's resync.
    async with inbox(lab, "hub", f"{base}/state") as at_hub:
        kept = await at_hub.wait(f"{base}/state")
        assert (kept.payload, kept.retain) == (b"v1", True)


@pytest.mark.parametrize(("bridge_in", "kept"), [("peers", b"v2"), ("all", b"v1")])
async def test_bridging_in_the_own_prefix_brings_back_stale_state(
    tmp_path: Path, bridge_in: str, kept: bytes
) -> None:
    """Why site.conf lists the other sites instead of "topic trunkguard/# in 1" ("all"):
    with that, on every reconnection the hub sends the site's own retained topics back
    (the bridge subscribes before it resyncs, and MQTT 5 no-local does not apply to
    retained messages), and the hub's older copy replaces the newer one at the site."""
    with sites(tmp_path, bridge_in=bridge_in) as lab:
        state = "trunkguard/site-a/n1/state"
        async with (
            inbox(lab, "site-a", state, user=lab.noc_user) as at_a,
            inbox(lab, "hub", state) as at_hub,
            lab.client("site-a") as pub,
        ):
            await pub.publish(state, b"v1", qos=1, retain=True)
            await at_hub.wait(state, b"v1")
            lab.block_bridge("site-a")
            await pub.publish(state, b"v2", qos=1, retain=True)
            await at_a.wait(state, b"v2")
            lab.reset_bridge("site-a")
            lab.unblock_bridge("site-a")
            await lab.bridge_connected("site-a")
            await at_hub.wait(state, b"v2")
            await pub.publish("trunkguard/site-a/n1/fence", b"f", qos=1, retain=True)
            print(f"\nbridge_in={bridge_in}: site-a saw {[m.payload for m in at_a.msgs]}")
        got = await retained(lab, "site-a", state, "trunkguard/site-a/n1/fence")
        assert got is not None and got.payload == kept
