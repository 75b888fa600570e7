"""MQTT session: the agent's state for peers and operators (and sensor and peer topics in).

publish() never blocks and never raises, so probes and the core can call it from
anywhere on the loop. Retained topics are cached (latest value per topic) and
republished after every reconnect: with a non-persistent broker or a broker restart
the retained state would otherwise be gone.

Sessions (after Sparkplug 3.0): every connection attempt takes a new epoch, larger
than any before it (persisted). The birth (`status` online), the Last Will (`status`
offline) and every retained JSON document carry it, so a consumer can tell a late Will
or a stale retained document of an older session from the live one. A deliberate
stop() publishes offline itself, because a clean DISCONNECT makes the broker discard
the Will. If our own death shows up while we are connected (a late Will through a
bridge), or anyone asks on `rebirth`, everything retained is published again.

MQTT 5 by default: message expiry (heartbeats that vanish when the agent does) and
subscriptions that never see their own messages echoed twice; 3.1.1 where configured.
Subscriptions are declared with set_subscriptions() (wildcards allowed) and made again
on every connection; a handler gets each Received message on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from structlog.typing import FilteringBoundLogger

from trunkguard.obs.logging import get_logger

STATUS = "status"
REBIRTH = "rebirth"
_WILDCARDS = ("+", "#")
_REBIRTH_EVERY = 1.0  # seconds: at most one rebirth per second, whoever asks
Payload = Mapping[str, Any] | str | bytes


class Received(NamedTuple):
    topic: str
    payload: bytes
    retained: bool  # delivered from the broker's store (or, as_published, sent retained)
    expiry: float | None  # MQTT 5 message expiry left, seconds
    response_topic: str | None = None  # MQTT 5 request/response
    correlation: bytes | None = None


Handler = Callable[[Received], None]


def wall_iso(t: float | None = None) -> str:
    """A wall-clock time as UTC ISO 8601 with milliseconds (what every document shows)."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def status_doc(online: bool, epoch: int, connected_at: str) -> bytes:
    word = "online" if online else "offline"
    return encode({"status": word, "epoch": epoch, "connected_at": connected_at})


def valid_filter(topic: str) -> bool:
    """An MQTT topic filter: '+' a whole level, '#' only the whole last level."""
    levels = topic.split("/")
    if not topic or any(not lv for lv in levels):
        return False
    for i, lv in enumerate(levels):
        if ("+" in lv and lv != "+") or ("#" in lv and (lv != "#" or i != len(levels) - 1)):
            return False
    return True


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 1883
    site: str = "site"
    node: str = "node"
    prefix: str = "trunkguard"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    keepalive: float = 10.0
    qos: int = 1
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False  # skip the hostname check only (like mosquitto_pub --insecure)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    tls: bool = False  # TLS with the system trust store; implied by tls_ca_file/tls_cert_file
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1 (no message expiry)

    def __post_init__(self) -> None:
        for name in ("site", "node"):
            value = getattr(self, name)
            if not value or "/" in value or any(w in value for w in _WILDCARDS):
                raise ValueError(f"mqtt {name} must be one topic level: {value!r}")
        if not self.prefix.strip("/") or any(w in self.prefix for w in _WILDCARDS):
            raise ValueError(f"mqtt prefix is not a valid topic prefix: {self.prefix!r}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"mqtt qos must be 0, 1 or 2: {self.qos}")
        if self.keepalive <= 0 or not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("mqtt keepalive and backoff must be positive, initial <= max")
        if self.protocol not in (4, 5):
            raise ValueError(f"mqtt protocol must be 5 or 4 (3.1.1): {self.protocol}")

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.tls_ca_file or self.tls_cert_file)


def encode(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


class MqttPublisher:
    def __init__(
        self,
        settings: MqttSettings,
        *,
        log: FilteringBoundLogger | None = None,
        on_connected: Callable[[bool], None] | None = None,
        queue_max: int = 1000,
        epochs: Callable[[], int] | None = None,  # the next epoch (blocking: persisted)
    ) -> None:
        self.settings = settings
        self._log = (log or get_logger("trunkguard.bus.mqtt")).bind(
            broker=f"{settings.host}:{settings.port}"
        )
        self._on_connected = on_connected
        self._epochs = epochs or (lambda: time.time_ns() // 1_000_000)
        self.epoch = 0  # of the session being made or live
        self._connected_at = ""
        self._retained: dict[str, tuple[Payload, float | None]] = {}  # payload, expiry
        self._dirty: dict[str, None] = {}  # retained topics not yet sent this session
        self._queue: deque[tuple[str, bytes, Properties | None]] = deque(maxlen=max(1, queue_max))
        self._rebirth_at = -_REBIRTH_EVERY
        self.rebirths = 0
        self._dropped = 0
        self._connected = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._flush_deadline = 0.0  # loop time; set by stop()
        self._paho = _PahoDetail()
        self._paho_log = self._paho.logger()
        # Our own status (to notice our death published while alive) and rebirth requests.
        self._internal: dict[str, Handler] = {
            self.topic(STATUS): self._own_status,
            self.topic(REBIRTH): lambda _m: self._asked_rebirth(),
        }
        self._handlers: dict[str, Handler] = dict(self._internal)
        self._wildcards: list[tuple[str, Handler]] = []
        self._as_published: frozenset[str] = frozenset()
        self._subscribed: set[str] = set()  # in this session
        self._impostor = False

    @property
    def base(self) -> str:
        s = self.settings
        return f"{s.prefix.strip('/')}/{s.site}/{s.node}"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def dropped(self) -> int:
        """Non-retained messages dropped because the queue was full."""
        return self._dropped

    def topic(self, subtopic: str) -> str:
        sub = subtopic.strip("/")
        if not sub or any(w in sub for w in _WILDCARDS):
            raise ValueError(f"invalid subtopic {subtopic!r}")
        return f"{self.base}/{sub}"

    def publish(
        self,
        subtopic: str,
        payload: Payload,
        *,
        retain: bool = False,
        expiry: float | None = None,
    ) -> None:
        """Queue a message; retained ones are cached. b"" with retain=True clears the topic.

        A retained JSON document gets its publication time now and the session's epoch
        when it is sent. `expiry`: MQTT 5 message expiry, seconds (retained only)."""
        try:
            if subtopic.strip("/") == STATUS:
                raise ValueError("status is reserved for online/offline")
            topic = self.topic(subtopic)
            if isinstance(payload, Mapping):
                if retain:
                    payload = {**payload, "published_at": wall_iso()}
                data = encode(payload)
            else:
                data = encode(payload)
        except Exception as exc:  # the caller's bug must not take down the caller
            self._log.warning("mqtt publish rejected", subtopic=subtopic, error=str(exc))
            return
        if retain:
            self._retained[topic] = (payload if isinstance(payload, Mapping) else data, expiry)
            self._dirty[topic] = None
        else:
            if len(self._queue) == self._queue.maxlen:
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    self._log.warning("mqtt queue full", dropped=self._dropped)
            self._queue.append((topic, data, None))
        self._wake.set()

    def reply(self, topic: str, payload: Payload, correlation: bytes | None) -> None:
        """Answer an MQTT 5 request on its Response Topic, with its Correlation Data
        (never retained; a topic with wildcards or over 256 bytes is not answered)."""
        if not topic or len(topic) > 256 or any(w in topic for w in _WILDCARDS):
            return
        props = None
        if self.settings.protocol == 5 and correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation[:256]
        self._queue.append((topic, encode(payload), props))
        self._wake.set()

    def ask_rebirth(self, site: str, node: str) -> None:
        """Ask another node to publish its retained state again (its broker lost it)."""
        prefix = self.settings.prefix.strip("/")
        if all(valid_filter(x) and not any(w in x for w in _WILDCARDS) for x in (site, node)):
            self._queue.append((f"{prefix}/{site}/{node}/{REBIRTH}", b"{}", None))
            self._wake.set()

    def set_subscriptions(
        self, handlers: Mapping[str, Handler], as_published: frozenset[str] = frozenset()
    ) -> None:
        """The topic filters to receive and who gets each message (exact topics first).

        `as_published` topics (commands) get only live messages, with the retain flag as
        the sender set it (MQTT 5), so a message sent retained can be told and refused."""
        for topic in handlers:
            if not valid_filter(topic):
                raise ValueError(f"invalid topic to subscribe {topic!r}")
        self._as_published = as_published
        self._handlers = dict(handlers)
        self._handlers.update(self._internal)
        self._wildcards = [
            (t, h) for t, h in self._handlers.items() if any(w in t for w in _WILDCARDS)
        ]
        self._wake.set()

    def rebirth(self) -> bool:
        """Publish everything retained again (asked on `rebirth`); rate-limited."""
        now = asyncio.get_running_loop().time()
        if now - self._rebirth_at < _REBIRTH_EVERY:
            return False
        self._rebirth_at = now
        self.rebirths += 1
        self._dirty = dict.fromkeys([self.topic(STATUS), *self._retained])
        self._wake.set()
        return True

    async def run(self) -> None:
        """Connect, publish and reconnect until stop(); never raises MqttError."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("MqttPublisher.run() is already running")
        self._task = asyncio.current_task()
        self._finished.clear()
        s = self.settings
        delay = s.backoff_initial
        try:
            while not self._stop.is_set():
                await self._new_epoch()
                try:
                    async with self._client() as client:
                        self._set_connected(True)
                        delay = s.backoff_initial
                        self._paho.take()  # stale detail from before this connection
                        self._log.info("mqtt connected", base=self.base, epoch=self.epoch)
                        await self._session(client)
                except (aiomqtt.MqttError, OSError) as exc:  # OSError: TLS files unreadable
                    event = "mqtt disconnected" if self._connected else "mqtt connect failed"
                    self._set_connected(False)
                    detail = self._paho.take()
                    extra = {"detail": detail} if detail else {}
                    self._log.warning(
                        event, error=_describe(exc), retry_in=round(delay, 3), **extra
                    )
                    await self._backoff(delay)
                    delay = min(delay * 2, s.backoff_max)
                finally:
                    self._set_connected(False)
            self._log.info("mqtt stopped")
        finally:
            self._finished.set()

    async def stop(self, timeout: float = 2.0) -> None:
        """Publish retained offline and disconnect cleanly, within `timeout` seconds."""
        self._flush_deadline = asyncio.get_running_loop().time() + timeout / 2
        self._stop.set()
        self._wake.set()
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except TimeoutError:
            self._log.warning("mqtt stop timeout", timeout=timeout)
            task.cancel()

    async def _new_epoch(self) -> None:
        """A new session: its epoch (persisted before it is used) and connect time."""
        try:
            self.epoch = await asyncio.to_thread(self._epochs)
        except (OSError, ValueError) as exc:
            # Never reuse an epoch: the clock in ms is larger than any counted one.
            self.epoch = max(self.epoch + 1, time.time_ns() // 1_000_000)
            self._log.warning("cannot save the mqtt epoch", error=str(exc), epoch=self.epoch)
        self._connected_at = wall_iso()

    def _status(self, online: bool) -> bytes:
        return status_doc(online, self.epoch, self._connected_at)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        v5 = s.protocol == 5
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            logger=self._paho_log,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topic(STATUS), self._status(False), qos=1, retain=True),
            keepalive=max(1, round(s.keepalive)),
            timeout=max(1.0, min(s.keepalive, 10.0)),
            tls_context=self._tls_context() if s.use_tls else None,
            # Bounded: a flood on a subscribed topic waits in the broker, not in our RAM.
            max_queued_incoming_messages=10_000,
            # Small messages go out at once: Nagle with the broker's delayed ACK held an
            # answer back 40 ms.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def _tls_context(self) -> ssl.SSLContext:
        # Built per connection attempt so renewed certificates are picked up.
        s = self.settings
        ctx = ssl.create_default_context(cafile=s.tls_ca_file)
        if s.tls_cert_file:
            ctx.load_cert_chain(s.tls_cert_file, s.tls_key_file)
        ctx.check_hostname = not s.tls_insecure
        return ctx

    async def _session(self, client: aiomqtt.Client) -> None:
        status = self.topic(STATUS)
        self._subscribed = set()
        watcher = asyncio.create_task(self._receive(client))
        try:
            if not self._stop.is_set():
                online = self._status(True)
                await self._guard(client.publish(status, online, qos=1, retain=True), watcher)
                self._dirty = dict.fromkeys(self._retained)
                await self._pump(client, watcher)
            offline = self._status(False)
            await self._guard(client.publish(status, offline, qos=1, retain=True), watcher)
        except asyncio.CancelledError:
            # Cancelled without stop(): the clean disconnect that follows suppresses the
            # Will, so say offline ourselves (best effort) rather than stay "online".
            if not self._stop.is_set() and not watcher.done():
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    offline = self._status(False)
                    await asyncio.wait_for(client.publish(status, offline, qos=1, retain=True), 1.0)
            raise
        finally:
            watcher.cancel()
            if watcher.done() and not watcher.cancelled():
                watcher.exception()  # retrieved: the error is reported by the caller

    async def _guard(self, call: Awaitable[object], watcher: asyncio.Task[None]) -> None:
        """Await a publish, but fail at once when the connection drops: aiomqtt would
        otherwise wait its full timeout for a PUBACK that can no longer come."""
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
        if task.done() and not task.cancelled():
            task.result()  # raises the publish error, if any
            return
        if watcher.done():
            watcher.result()  # raises the MqttError that ended the connection
        raise aiomqtt.MqttError("disconnected")

    async def _pump(self, client: aiomqtt.Client, watcher: asyncio.Task[None]) -> None:
        while not self._stop.is_set():
            if self._subscribed != set(self._handlers):
                await self._sync_subscriptions(client, watcher)
            elif not await self._send_next(client, watcher):
                self._wake.clear()
                await self._guard(self._wake.wait(), watcher)
        # Stopping: flush what is pending (typically the final state snapshot), with
        # half of the stop budget, so that the offline status still fits in.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._flush_deadline):
                while await self._send_next(client, watcher):
                    pass

    async def _sync_subscriptions(
        self, client: aiomqtt.Client, watcher: asyncio.Task[None]
    ) -> None:
        wanted = set(self._handlers)
        for topic in sorted(wanted - self._subscribed):
            if topic in self._as_published and self.settings.protocol == 5:
                opts = SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2)
                await self._guard(client.subscribe(topic, options=opts), watcher)
            else:
                await self._guard(client.subscribe(topic, qos=1), watcher)
            self._subscribed.add(topic)
            self._log.info("mqtt subscribed", topic=topic)
        for topic in sorted(self._subscribed - wanted):
            await self._guard(client.unsubscribe(topic), watcher)
            self._subscribed.discard(topic)

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Also the disconnection detector: iterating only ends with MqttError.
        async for msg in client.messages:
            topic = str(msg.topic)
            handler = self._handlers.get(topic)
            if handler is None:
                handler = next((h for f, h in self._wildcards if msg.topic.matches(f)), None)
            if handler is None:
                continue
            raw = msg.payload
            data = raw if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
            props = msg.properties
            left = getattr(props, "MessageExpiryInterval", None)
            response = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            received = Received(topic, bytes(data), bool(msg.retain), left, response, correlation)
            try:
                handler(received)
            except Exception as exc:  # a handler's bug must not end the session
                self._log.warning("mqtt handler failed", topic=topic, error=repr(exc))

    def _own_status(self, m: Received) -> None:
        """Our status as the broker holds it: heal it if it says we are dead."""
        if self._stop.is_set() or not self._connected:
            return
        try:
            doc = json.loads(m.payload)
            online, epoch = doc["status"] == "online", int(doc["epoch"])
        except (ValueError, TypeError, KeyError):
            online, epoch = False, -1  # garbage in our own status slot: replace it
        if online and epoch > self.epoch and not self._impostor:
            self._impostor = True
            self._log.error("another agent publishes as this node", epoch=epoch, base=self.base)
        if not online or epoch < self.epoch:
            self._log.warning("own death seen while connected: birth again", epoch=epoch)
            self._dirty[self.topic(STATUS)] = None
            self._wake.set()

    def _asked_rebirth(self) -> None:
        if self.rebirth():
            self._log.info("rebirth requested: publishing everything retained again")

    async def _send_next(self, client: aiomqtt.Client, watcher: asyncio.Task[None]) -> bool:
        """Send one pending message; False when nothing is pending."""
        qos = self.settings.qos
        if self._dirty:  # retained first: they carry the current state peers act on
            topic = next(iter(self._dirty))
            kept = self._retained.get(topic)
            data, props = self._status(True), None  # our status, asked again
            if kept is not None:
                payload, expiry = kept
                data = encode(
                    {**payload, "epoch": self.epoch} if isinstance(payload, Mapping) else payload
                )
                props = self._expiry(expiry)
            publish = client.publish(topic, data, qos=qos, retain=True, properties=props)
            await self._guard(publish, watcher)
            if self._retained.get(topic) is kept:  # not replaced while we awaited
                self._dirty.pop(topic, None)
                if kept is not None and not data:  # the broker dropped it: forget it too
                    del self._retained[topic]
        elif self._queue:
            entry = self._queue[0]
            publish = client.publish(entry[0], entry[1], qos=qos, properties=entry[2])
            await self._guard(publish, watcher)
            if self._queue and self._queue[0] is entry:  # not dropped by overflow
                self._queue.popleft()
        else:
            return False
        return True

    def _expiry(self, seconds: float | None) -> Properties | None:
        if seconds is None or self.settings.protocol != 5:
            return None  # MQTT 3.1.1 has no expiry: documented, heartbeats judged by age
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = max(1, round(seconds))
        return props

    async def _backoff(self, delay: float) -> None:
        # Jitter spreads reconnects of many agents after a broker restart.
        wait = delay * random.uniform(0.8, 1.0)  # noqa: S311 - not cryptographic
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), wait)

    def _set_connected(self, value: bool) -> None:
        if value == self._connected:
            return
        self._connected = value
        if self._on_connected is not None:
            try:
                self._on_connected(value)
            except Exception as exc:
                self._log.warning("mqtt on_connected callback failed", error=repr(exc))


class _PahoDetail(logging.Handler):
    """Keeps paho's last warning/error (e.g. the errno of a lost connection) so it is
    reported inside our one line per failure instead of as extra unstructured lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()

    def take(self) -> str | None:
        last, self.last = self.last, None
        return last

    def logger(self) -> logging.Logger:
        log = logging.Logger("paho")  # outside the logging tree: nothing propagates
        log.setLevel(logging.WARNING)
        log.addHandler(self)
        return log


def _describe(exc: BaseException) -> str:
    # aiomqtt chains the socket-level reason ("connection lost") as the cause.
    text = str(exc) or type(exc).__name__
    return f"{text}: {exc.__cause__}" if exc.__cause__ is not None else text
