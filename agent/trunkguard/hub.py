"""Between the core and the shell: observations in, events out, desired state onwards.

Inputs call the observe_* entry points; the Engine decides; every event it returns
is handed to the sinks subscribed to its type (logs, metrics, MQTT, intent, the
reroute-latency measurement), then the desired routing goes to every actuator's
converger. Sinks subscribe by type and never call back into the core.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from trunkguard.act.converge import ApplyReport, Converger
from trunkguard.core.engine import Engine
from trunkguard.core.events import Event, ProbeOutcome, State, Transition, Verdict
from trunkguard.core.ids import Kind, Paths, TargetId
from trunkguard.core.peer import PeerBeat, PeerStatus
from trunkguard.core.sensor import Reading

E = TypeVar("E")
ProbeHook = Callable[[TargetId, str, ProbeOutcome, Verdict], None]


class Hub:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock
        self.convergers: list[Converger] = []
        self.probes: dict[TargetId, ProbeOutcome] = {}  # each trunk's last probe, for views
        # When each call check last passed (or was first configured), for views.
        self.passed: dict[TargetId, float] = {}
        self.on_probe: ProbeHook | None = None  # an observer of every probe (the lab)
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}
        self._batch: list[Callable[[Sequence[Event]], None]] = []
        self._pushed: dict[str, Paths] = {}
        self._wake = asyncio.Event()

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        """Call handler with every event (or report) of exactly this type."""
        self._handlers.setdefault(kind, []).append(handler)

    def after_each(self, handler: Callable[[Sequence[Event]], None]) -> None:
        """Call handler once per batch of events, after every per-event handler."""
        self._batch.append(handler)

    def publish(self, item: object) -> None:
        """Hand one event or report to its subscribers (also for shell-made ones)."""
        for handler in self._handlers.get(type(item), ()):
            handler(item)

    def emit(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for ev in events:
            self.publish(ev)
        self.push_desired()
        if any(
            isinstance(ev, Transition) and ev.target.kind is Kind.LINK and ev.new is State.UP
            for ev in events
        ):
            # Routes through a link that went down may have been deleted by the kernel.
            for conv in self.convergers:
                conv.recheck()
        for handler in self._batch:
            handler(events)
        self._wake.set()  # timers may have moved

    def push_desired(self) -> None:
        desired = self.engine.desired()
        if desired != self._pushed:
            self._pushed = dict(desired)
            for c in self.convergers:
                c.set_desired(desired)

    def attach(self, convergers: list[Converger]) -> None:
        """A new generation's actuators: they get the desired state from scratch."""
        self.convergers, self._pushed = convergers, {}

    def report(self, r: ApplyReport) -> None:
        self.publish(r)

    # ---- inputs -------------------------------------------------------------------------

    def probed(self, target: TargetId, dest: str, outcome: ProbeOutcome, v: Verdict) -> None:
        # The hot path: 10,000 trunks mean 10,000 calls a second.
        self.probes[target] = outcome
        if self.on_probe is not None:
            self.on_probe(target, dest, outcome, v)
        events = self.engine.observe(v, dest)
        if events:
            self.emit(events)

    def dests(self, target: TargetId, keys: list[str]) -> None:
        self.emit(self.engine.set_dests(target, keys, self.clock()))

    def link(self, name: str, up: bool, reason: str, at: float) -> None:
        self.emit(self.engine.observe_link(TargetId(Kind.LINK, name), up, reason, at))
        self._wake.set()  # a link coming up starts its up_hold timer

    def sample(self, name: str, value: Reading | None, at: float, error: str) -> None:
        """A sensor reading, or (value None) the one-line reason it could not be taken."""
        if value is None:
            self.emit(self.engine.sensor_failed(name, error, at))
        else:
            self.emit(self.engine.observe_sensor(name, value, at))

    def checked(self, v: Verdict) -> None:
        """A verdict from a check other than a probe (a synthetic call)."""
        if v.ok:
            self.passed[v.target] = v.at
        self.emit(self.engine.observe(v))

    def peer(self, msg: PeerStatus | PeerBeat) -> None:
        self.emit(self.engine.observe_peer(msg, self.clock()))

    def claim(self, peer: str, who: str, epoch: int | None) -> None:
        self.emit(self.engine.claim(peer, who, epoch, self.clock()))

    def session(self, up: bool, epoch: int) -> None:
        """Our own MQTT session came up or went down."""
        self.emit(self.engine.session(up, epoch, self.clock()))
        self._wake.set()  # the echo deadline moved

    def heard_self(self, ttl: float) -> None:
        self.emit(self.engine.heard_self(ttl, self.clock()))
        self._wake.set()

    async def timers(self) -> None:
        """Run the core's timers (holds, staleness, failback) when they fall due."""
        while True:
            self._wake.clear()
            nxt = self.engine.next_wakeup()
            now = self.clock()
            if nxt is not None and nxt <= now:
                self.emit(self.engine.tick(now))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if nxt is None else nxt - now)
