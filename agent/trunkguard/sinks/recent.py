"""The last things that happened, with their reasons, for the status page."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from trunkguard.core.events import (
    Decision,
    Fence,
    SensorChange,
    SiteChange,
    TakeoverChange,
    Transition,
)
from trunkguard.hub import Hub

KEEP = 50


class RecentSink:
    def __init__(self, hub: Hub, wall: Callable[[float], str]) -> None:
        self.wall = wall
        self.events: deque[dict[str, str]] = deque(maxlen=KEEP)
        hub.subscribe(Transition, self.transition)
        hub.subscribe(Decision, self.decision)
        hub.subscribe(SensorChange, self.sensor)
        hub.subscribe(SiteChange, self.site)
        hub.subscribe(TakeoverChange, self.takeover)
        hub.subscribe(Fence, self.fence)

    def _add(self, at: float, what: str, change: str, reason: str) -> None:
        self.events.appendleft(
            {"at": self.wall(at), "what": what, "change": change, "reason": reason}
        )

    def transition(self, t: Transition) -> None:
        self._add(t.at, str(t.target), f"{t.old} → {t.new}", t.reason)

    def decision(self, d: Decision) -> None:
        old = "-" if d.old is None else str(d.old)
        self._add(d.at, f"route {d.group}", f"{old} → {d.new} ({d.kind})", d.reason)

    def sensor(self, c: SensorChange) -> None:
        self._add(c.at, f"sensor {c.sensor}", f"{c.old} → {c.new}", c.reason)

    def site(self, c: SiteChange) -> None:
        self._add(c.at, "site", f"{c.old} → {c.new}", c.reason)

    def takeover(self, c: TakeoverChange) -> None:
        change = f"{c.old} → {c.new}" if c.old is not c.new else (c.result or "refused")
        self._add(c.at, f"takeover {c.peer}", change, c.reason)

    def fence(self, f: Fence) -> None:
        self._add(f.at, "fence", "on" if f.on else "off", f.reason)
