"""A network link's health from what the kernel reports about it.

Pure. The link watcher reports every change of the kernel's view (admin state,
carrier, address, gateway neighbour) as (up, reason); this machine turns that into
the link's state with its own hysteresis:
- down: at once by default (a dead uplink is a fact, not a guess); `down_hold` can
  ride out sub-second blips, at the price of that much more outage.
- up: only after the link has been up continuously for `up_hold`, so a flapping
  uplink does not drag routes back and forth.
- The first report is taken as it is: it comes from a netlink dump at start, and
  holding a known-dead link "unknown" would only delay the failover.
"""

from __future__ import annotations

from dataclasses import dataclass

from trunkguard.core.events import State, Transition
from trunkguard.core.health import move, set_maintenance
from trunkguard.core.ids import TargetId


@dataclass(frozen=True, slots=True)
class LinkParams:
    up_hold: float = 5.0
    down_hold: float = 0.0


@dataclass(slots=True)
class LinkHealth:
    name: TargetId
    params: LinkParams
    state: State = State.UNKNOWN
    since: float = 0.0
    reason: str = "no report yet"
    maintenance: bool = False
    seen: State = State.UNKNOWN  # what the kernel says now, before hysteresis
    seen_since: float = 0.0
    seen_reason: str = ""
    settled: State = State.UNKNOWN  # the kernel's view after hysteresis (state unless maintenance)

    def observe(self, up: bool, reason: str, at: float) -> Transition | None:
        new = State.UP if up else State.DOWN
        if new is not self.seen:
            self.seen, self.seen_since = new, at
        self.seen_reason = reason
        if self.settled is State.UNKNOWN:
            return self._settle(at, reason)
        return self.tick(at)

    def due(self) -> float | None:
        """When the kernel's current view will have been held long enough, if pending."""
        if self.seen is self.settled or self.seen is State.UNKNOWN:
            return None
        hold = self.params.up_hold if self.seen is State.UP else self.params.down_hold
        return self.seen_since + hold

    def tick(self, now: float) -> Transition | None:
        due = self.due()
        if due is None or now < due:
            return None
        if self.seen is State.UP:
            why = f"up for {self.params.up_hold:g}s: {self.seen_reason}"
        else:
            why = self.seen_reason
        return self._settle(due, why)

    def _settle(self, at: float, why: str) -> Transition | None:
        self.settled = self.seen
        return None if self.maintenance else move(self, self.settled, at, why)

    def set_maintenance(self, on: bool, at: float, by: str = "operator") -> Transition | None:
        return set_maintenance(self, on, at, self.settled, "link is", by)

    def reset(self, params: LinkParams) -> None:
        self.params = params
