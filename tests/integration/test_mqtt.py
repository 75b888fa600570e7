"""MqttPublisher against a real mosquitto with password auth."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog

from tests.lib import procs
from tests.lib.mosquitto import Broker, broker, make_tls
from trunkguard.bus.mqtt import MqttPublisher, MqttSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "agent1", "Sup3r-s3cret-pw"
WATCHER, WATCHER_PW = "noc", "noc-pw"
BASE = "trunkguard/s1/n1"


@pytest.fixture
def mq(tmp_path: Path) -> Iterator[Broker]:
    with broker(tmp_path, users={USER: PASSWORD, WATCHER: WATCHER_PW}) as b:
        yield b


def settings(b: Broker, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = dict(
        host=b.host,
        port=b.port,
        site="s1",
        node="n1",
        username=USER,
        password=PASSWORD,
        keepalive=1.0,
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    return MqttSettings(**{**base, **kw})


@asynccontextmanager
async def watcher(b: Broker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(b.host, b.port, username=WATCHER, password=WATCHER_PW) as c:
        await c.subscribe(f"{BASE}/#", qos=1)
        yield c


ONLINE: dict[str, Any] = {"status": "online"}
OFFLINE: dict[str, Any] = {"status": "offline"}


def matches(payload: object, want: bytes | dict[str, Any]) -> bool:
    """Bytes exactly; a dict: the JSON payload has (at least) these fields."""
    if isinstance(want, bytes):
        return payload == want
    try:
        doc = json.loads(payload)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return isinstance(doc, dict) and all(doc.get(k) == v for k, v in want.items())


async def expect(
    client: aiomqtt.Client, want: dict[str, Any], within: float = 10
) -> dict[str, aiomqtt.Message]:
    """Read messages until the latest payload of every topic in `want` matches."""
    latest: dict[str, aiomqtt.Message] = {}
    async with asyncio.timeout(within):
        async for msg in client.messages:
            latest[str(msg.topic)] = msg
            if all(t in latest and matches(latest[t].payload, p) for t, p in want.items()):
                return latest
    raise AssertionError("unreachable")


class Connections:
    """on_connected callback that tests can await."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[bool] = asyncio.Queue()

    def __call__(self, up: bool) -> None:
        self.changes.put_nowait(up)

    async def next(self, within: float = 10) -> bool:
        return await asyncio.wait_for(self.changes.get(), within)


async def test_late_subscriber_sees_retained_state_then_stop_says_offline(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns)
    assert pub.base == BASE
    pub.publish("state", {"seq": 1, "schema": 1, "b": [1, 2]}, retain=True)
    async with watcher(mq) as early:
        task = asyncio.create_task(pub.run())
        assert await conns.next() is True
        await expect(early, {f"{BASE}/state": {"b": [1, 2], "schema": 1, "seq": 1}})
        assert pub.connected

        async with watcher(mq) as late:
            seen = await expect(
                late,
                {f"{BASE}/status": ONLINE, f"{BASE}/state": {"b": [1, 2], "schema": 1, "seq": 1}},
            )
            assert seen[f"{BASE}/status"].retain and seen[f"{BASE}/state"].retain
            # One session: the birth and every retained document carry its epoch.
            status = json.loads(seen[f"{BASE}/status"].payload)  # type: ignore[arg-type]
            state = json.loads(seen[f"{BASE}/state"].payload)  # type: ignore[arg-type]
            assert status["epoch"] == state["epoch"] == pub.epoch > 0
            assert status["connected_at"].endswith("Z") and state["published_at"].endswith("Z")

            pub.publish("state", {"seq": 2}, retain=True)  # the final snapshot is flushed
            await pub.stop()
            await expect(late, {f"{BASE}/status": OFFLINE, f"{BASE}/state": {"seq": 2}})
    await asyncio.wait_for(task, 5)  # run() returns after stop(), without raising
    assert await conns.next() is False
    async with watcher(mq) as after:
        seen = await expect(after, {f"{BASE}/status": OFFLINE})
        assert seen[f"{BASE}/status"].retain


async def test_queue_is_bounded_while_disconnected_and_drained_in_order(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns, queue_max=2)
    for n in range(3):
        pub.publish("events", {"n": n})
    assert pub.dropped == 1
    async with watcher(mq) as w:
        task = asyncio.create_task(pub.run())
        got: list[bytes] = []
        async with asyncio.timeout(10):
            async for msg in w.messages:
                if str(msg.topic) == f"{BASE}/events":
                    got.append(msg.payload)
                    if len(got) == 2:
                        break
        assert got == [b'{"n":1}', b'{"n":2}']
        await pub.stop()
    await asyncio.wait_for(task, 5)


async def test_last_will_fires_when_the_agent_dies(mq: Broker, tmp_path: Path) -> None:
    script = (
        "import asyncio, json, sys\n"
        "from trunkguard.bus.mqtt import MqttPublisher, MqttSettings\n"
        "async def main():\n"
        "    pub = MqttPublisher(MqttSettings(**json.loads(sys.argv[1])))\n"
        "    pub.publish('state', {'seq': 7}, retain=True)\n"
        "    await pub.run()\n"
        "asyncio.run(main())\n"
    )
    cfg = {
        "host": mq.host,
        "port": mq.port,
        "site": "s1",
        "node": "n1",
        "username": USER,
        "password": PASSWORD,
        "keepalive": 1.0,
    }
    async with watcher(mq) as w:
        with procs.started(
            [sys.executable, "-c", script, json.dumps(cfg)],
            log=tmp_path / "publisher.log",
            cwd=REPO,
        ) as proc:
            await expect(w, {f"{BASE}/status": ONLINE, f"{BASE}/state": {"seq": 7}})
            os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker must send the Will
            await expect(w, {f"{BASE}/status": OFFLINE}, within=5)
    async with watcher(mq) as after:  # the Will was retained
        seen = await expect(after, {f"{BASE}/status": OFFLINE})
        assert seen[f"{BASE}/status"].retain


async def test_broker_restart_reconnects_and_republishes_retained(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns)
    pub.publish("routes/pstn", {"active": "carrierA"}, retain=True)
    task = asyncio.create_task(pub.run())
    assert await conns.next() is True

    await asyncio.to_thread(mq.restart)  # persistence is off: retained messages are gone
    assert await conns.next() is False
    assert await conns.next() is True
    pub.publish("state", {"seq": 2}, retain=True)

    want = {
        f"{BASE}/status": ONLINE,
        f"{BASE}/routes/pstn": {"active": "carrierA"},
        f"{BASE}/state": {"seq": 2},
    }
    async with watcher(mq) as w:
        await expect(w, want)  # republished (seen live or retained, depending on timing)
    async with watcher(mq) as late:  # ...and retained again at the fresh broker
        seen = await expect(late, want)
        assert all(seen[t].retain for t in want)
    await pub.stop()
    await asyncio.wait_for(task, 5)


class FailureLog:
    """A structlog logger whose connect failures the test can await."""

    def __init__(self, attempts: int) -> None:
        self.out = io.StringIO()
        self.enough = asyncio.Event()
        self.attempts = attempts
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(self.out),
            wrapper_class=structlog.BoundLogger,
            processors=[self._count, structlog.processors.JSONRenderer()],
        )

    def _count(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event["event"] == "mqtt connect failed":
            self.attempts -= 1
            if self.attempts <= 0:
                self.enough.set()
        return event

    async def run_until_failed(self, s: MqttSettings) -> str:
        """Run a publisher until enough attempts failed; assert it never raised or connected."""
        pub = MqttPublisher(s, log=self.log)
        task = asyncio.create_task(pub.run())
        await asyncio.wait_for(self.enough.wait(), 10)
        assert not task.done() and not pub.connected
        await pub.stop()
        await asyncio.wait_for(task, 5)
        return self.out.getvalue()


async def test_wrong_password_retries_without_raising_or_leaking(
    mq: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = replace(settings(mq), password="wrong-" + PASSWORD)
    assert "wrong-" not in repr(wrong) and PASSWORD not in repr(wrong)
    caplog.set_level(logging.DEBUG)
    text = await FailureLog(attempts=3).run_until_failed(wrong)
    assert text.count("mqtt connect failed") >= 3
    assert "not authori" in text.lower()
    assert PASSWORD not in text and PASSWORD not in caplog.text


async def test_publish_never_raises_on_bad_input(mq: Broker) -> None:
    pub = MqttPublisher(settings(mq))
    pub.publish("a/+", "x")
    pub.publish("", "x")
    unsortable: dict[Any, str] = {1: "int key", "a": "str key"}
    pub.publish("state", unsortable, retain=True)
    assert pub.dropped == 0 and not pub.connected


async def test_empty_retained_payload_clears_the_topic(mq: Broker) -> None:
    pub = MqttPublisher(settings(mq))
    pub.publish("trunks/old", {"up": True}, retain=True)
    pub.publish("trunks/kept", {"up": True}, retain=True)
    task = asyncio.create_task(pub.run())
    async with watcher(mq) as w:
        await expect(w, {f"{BASE}/trunks/old": {"up": True}})
        pub.publish("trunks/old", b"", retain=True)  # e.g. trunk removed by a reload
        pub.publish("status", "online", retain=True)  # reserved: rejected
        await expect(w, {f"{BASE}/trunks/old": b""})
    async with watcher(mq) as late:
        # Retained messages are delivered on SUBSCRIBE, before our own later marker.
        await late.publish(f"{BASE}/marker", b"end", qos=1)
        seen = await expect(late, {f"{BASE}/marker": b"end"})
        assert seen[f"{BASE}/trunks/kept"].retain
        assert f"{BASE}/trunks/old" not in seen
    await pub.stop()
    await asyncio.wait_for(task, 5)


async def test_cancelled_run_still_says_offline(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns)
    async with watcher(mq) as w:
        task = asyncio.create_task(pub.run())
        await expect(w, {f"{BASE}/status": ONLINE})
        task.cancel()  # e.g. the daemon's TaskGroup aborts: a clean DISCONNECT, no Will
        await expect(w, {f"{BASE}/status": OFFLINE})
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pub.connected


def bytes_waiting_at_broker(port: int) -> bool:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return any(int(line.split()[0]) > 0 for line in out.splitlines())


async def test_broker_crash_with_publish_in_flight_is_noticed_at_once(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq, keepalive=10.0), on_connected=conns)  # 10 s PUBACK wait
    task = asyncio.create_task(pub.run())
    assert await conns.next() is True
    mq.signal(signal.SIGSTOP)
    pub.publish("events", {"n": 1})  # its PUBACK will never come
    await asyncio.to_thread(
        procs.wait_for, lambda: bytes_waiting_at_broker(mq.port), 5, "publish at the frozen broker"
    )
    await asyncio.to_thread(mq.kill)  # the kernel resets the connection
    assert await conns.next(within=3) is False  # not after the 10 s publish timeout
    await asyncio.to_thread(mq.start)
    assert await conns.next() is True
    await pub.stop()
    await asyncio.wait_for(task, 5)


# paho does not close its socket when the TLS handshake fails (the GC does, with a
# ResourceWarning); that is paho's, not a leak of ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_with_our_ca_and_hostname_check(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "pki")  # the certificate names 127.0.0.1 only
    with broker(tmp_path, users={USER: PASSWORD, WATCHER: WATCHER_PW}, tls=tls) as b:
        conns = Connections()
        good = MqttPublisher(settings(b, tls_ca_file=str(tls.ca_file)), on_connected=conns)
        task = asyncio.create_task(good.run())
        assert await conns.next() is True
        await good.stop()
        await asyncio.wait_for(task, 5)

        async def connect_fails(**kw: Any) -> str:
            return await FailureLog(attempts=2).run_until_failed(settings(b, **kw))

        assert "CERTIFICATE_VERIFY_FAILED" in await connect_fails(tls=True)  # system CAs
        mismatch = await connect_fails(host="localhost", tls_ca_file=str(tls.ca_file))
        assert "Hostname mismatch" in mismatch

        conns = Connections()  # tls_insecure skips only the name check
        insecure = MqttPublisher(
            settings(b, host="localhost", tls_ca_file=str(tls.ca_file), tls_insecure=True),
            on_connected=conns,
        )
        task = asyncio.create_task(insecure.run())
        assert await conns.next() is True
        await insecure.stop()
        await asyncio.wait_for(task, 5)


async def test_subscriptions_are_delivered_changed_and_renewed_after_restart(mq: Broker) -> None:
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns)
    pub.set_subscriptions({"bms/room-a/temp": lambda m: got.put_nowait((m.topic, m.payload))})
    task = asyncio.create_task(pub.run())
    assert await conns.next() is True

    async def send_until_seen(topic: str, payload: bytes) -> None:
        # A subscription is made asynchronously after connecting: publish until it lands.
        async with aiomqtt.Client(mq.host, mq.port, username=WATCHER, password=WATCHER_PW) as c:
            async with asyncio.timeout(10):
                while True:
                    await c.publish(topic, payload, qos=1)
                    try:
                        seen = await asyncio.wait_for(got.get(), 0.2)
                    except TimeoutError:
                        continue
                    assert seen == (topic, payload)
                    return

    await send_until_seen("bms/room-a/temp", b"24.5")
    await asyncio.to_thread(mq.restart)  # a fresh broker knows no subscriptions
    assert await conns.next() is False
    assert await conns.next() is True
    await send_until_seen("bms/room-a/temp", b"25.0")

    pub.set_subscriptions({"bms/chiller/running": lambda m: got.put_nowait((m.topic, m.payload))})
    await send_until_seen("bms/chiller/running", b"true")
    async with aiomqtt.Client(mq.host, mq.port, username=WATCHER, password=WATCHER_PW) as c:
        await c.publish("bms/room-a/temp", b"99", qos=1)
        await c.publish("bms/chiller/running", b"false", qos=1)
    # Ordered delivery on one connection: the dropped topic's message would come first.
    assert await asyncio.wait_for(got.get(), 5) == ("bms/chiller/running", b"false")
    for bad in ("bms/te+mp", "bms/#/x", "", "bms//x"):
        with pytest.raises(ValueError):
            pub.set_subscriptions({bad: lambda m: None})
    await pub.stop()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("protocol", [5, 4])
async def test_heartbeat_expiry_with_mqtt5_and_none_with_311(mq: Broker, protocol: int) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq, protocol=protocol), on_connected=conns)
    pub.publish("heartbeat", {"seq": 1}, retain=True, expiry=3.0)
    task = asyncio.create_task(pub.run())
    assert await conns.next() is True
    v5 = aiomqtt.ProtocolVersion.V5
    async with aiomqtt.Client(
        mq.host, mq.port, username=WATCHER, password=WATCHER_PW, protocol=v5
    ) as w:
        await w.subscribe(f"{BASE}/#", qos=1)
        seen = await expect(w, {f"{BASE}/heartbeat": {"seq": 1}, f"{BASE}/status": ONLINE})
    hb = seen[f"{BASE}/heartbeat"]
    left = getattr(hb.properties, "MessageExpiryInterval", None)
    if protocol == 5:
        assert left is not None and 1 <= left <= 3  # counted down by the broker
    else:
        assert left is None  # 3.1.1 cannot expire it: peers believe only live heartbeats
    assert json.loads(hb.payload)["epoch"] == pub.epoch  # type: ignore[arg-type]
    await pub.stop()
    await asyncio.wait_for(task, 5)


async def test_rebirth_request_republishes_and_is_rate_limited(mq: Broker) -> None:
    conns = Connections()
    pub = MqttPublisher(settings(mq), on_connected=conns)
    pub.publish("state", {"seq": 1}, retain=True)
    task = asyncio.create_task(pub.run())
    assert await conns.next() is True
    async with watcher(mq) as w:
        await expect(w, {f"{BASE}/state": {"seq": 1}})
        # The broker "lost" it (cleared by someone), then a peer asks for a rebirth.
        await w.publish(f"{BASE}/state", b"", qos=1, retain=True)
        await expect(w, {f"{BASE}/state": b""})
        for _ in range(5):  # a burst counts once
            await w.publish(f"{BASE}/rebirth", b"{}", qos=1)
        await expect(w, {f"{BASE}/state": {"seq": 1}, f"{BASE}/status": ONLINE})
    assert pub.rebirths == 1
    await pub.stop()
    await asyncio.wait_for(task, 5)
