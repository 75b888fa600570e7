"""Per-target health state machine: rise/fall hysteresis, fast re-probe, hold-down.

Pure: no I/O, no clock. The shell feeds verdicts with their timestamps and asks
when the next probe is due.

Rules (HAProxy-like, which operators already know):
- `fall` consecutive failures take an up (or unknown) target down;
  `rise` consecutive successes take a down (or unknown) target up.
- While a change is pending (a streak against the current state has started, or
  the target has no verdict yet) probes run every `fast_interval` instead of
  `interval`, so a dead trunk is declared within detection_bound() below rather
  than fall*interval.
- A verdict carrying `hold_until` (503 with Retry-After) takes the target down at
  once: the peer told us explicitly not to send to it (RFC 3261 21.5.4), and
  successes before the hold ends do not count towards rise.
- This machine only follows probes; operator maintenance is the trunk's business
  (core/trunk.py), so the real state is known the moment maintenance ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trunkguard.core.events import State, Transition, Verdict
from trunkguard.core.ids import TargetId


@dataclass(frozen=True, slots=True)
class HealthParams:
    interval: float = 1.0
    fast_interval: float = 0.2
    rise: int = 2
    fall: int = 3


class Stateful(Protocol):
    name: TargetId
    state: State
    since: float
    reason: str


def move(h: Stateful, new: State, at: float, reason: str) -> Transition | None:
    """The one way a health machine changes state: a Transition carrying its reason."""
    if new is h.state:
        return None
    t = Transition(h.name, h.state, new, at, reason)
    h.state, h.since, h.reason = new, at, reason
    return t


class Maintainable(Stateful, Protocol):
    maintenance: bool


def set_maintenance(
    h: Maintainable, on: bool, at: float, underlying: State, what: str, by: str = "operator"
) -> Transition | None:
    """Maintenance over any machine: on hides `underlying`, off reveals it. `by` says
    who: the operator, or a drill (labelled in every event it causes)."""
    if on == h.maintenance:
        return None
    h.maintenance = on
    if on:
        return move(h, State.MAINTENANCE, at, f"maintenance on ({by})")
    return move(h, underlying, at, f"maintenance off ({by}), {what} {underlying}")


@dataclass(slots=True)
class TargetHealth:
    name: TargetId
    params: HealthParams
    state: State = State.UNKNOWN
    since: float = 0.0
    reason: str = "no verdict yet"
    ok_streak: int = 0
    fail_streak: int = 0
    hold_until: float | None = None

    @property
    def pending(self) -> bool:
        """True while a state change may be under way (drives fast_interval)."""
        if self.state is State.UNKNOWN:
            return True
        if self.state is State.UP:
            return self.fail_streak > 0
        return self.ok_streak > 0

    def next_delay(self) -> float:
        return self.params.fast_interval if self.pending else self.params.interval

    def not_before(self) -> float | None:
        """Earliest time a probe may be sent (Retry-After hold-down), if any."""
        return self.hold_until

    def observe(self, v: Verdict) -> Transition | None:
        if v.hold_until is not None and not v.ok:
            self.hold_until = max(self.hold_until or 0.0, v.hold_until)
            self.ok_streak = 0
            self.fail_streak = max(self.fail_streak + 1, self.params.fall)
            return move(self, State.DOWN, v.at, f"{v.reason} (hold-down)")
        if v.ok:
            if self.hold_until is not None and v.at < self.hold_until:
                return None
            self.hold_until = None
            self.ok_streak += 1
            self.fail_streak = 0
            if self.state is not State.UP and self.ok_streak >= self.params.rise:
                return move(
                    self, State.UP, v.at, f"{self.ok_streak} consecutive successes: {v.reason}"
                )
        else:
            self.fail_streak += 1
            self.ok_streak = 0
            if self.state is not State.DOWN and self.fail_streak >= self.params.fall:
                return move(
                    self, State.DOWN, v.at, f"{self.fail_streak} consecutive failures: {v.reason}"
                )
        return None

    def reset(self, params: HealthParams) -> None:
        """New settings on reload: keep the state, restart the streaks."""
        self.params = params
        self.ok_streak = self.fail_streak = 0


def detection_bound(p: HealthParams, timeout: float) -> float:
    """Worst case from a trunk going silent to it being declared down.

    The next probe starts at most `interval` after the silence and fails `timeout`
    later; the streak is then pending, so the following probes start every
    `fast_interval` (the first one as soon as the failure is known, since probes may
    overlap) and each fails `timeout` after its start.
    """
    if p.fall == 1:
        return p.interval + timeout
    return p.interval + timeout + max(timeout, p.fast_interval) + (p.fall - 2) * p.fast_interval
