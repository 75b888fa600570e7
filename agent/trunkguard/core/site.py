"""Site evacuation: rules over sensors and targets, and the site's own state.

Pure. A rule is a tree: `any_of` / `all_of` of matches, where a match counts how
many of a list of sensors (or targets) are in a state, e.g. "2 of 3 room sensors
at warn or worse", "any room sensor projected critical within 10 minutes",
"chiller stopped". While the rule holds the site is evacuating and route groups
move to their remote paths; once it has been clear for `hold` the site returns
(auto) or waits for the operator (manual). An operator can force an evacuation
(fire in the building) and cancel it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trunkguard.core.events import Level, SiteChange, SiteState, State
from trunkguard.core.ids import TargetId
from trunkguard.core.sensor import SensorHealth, describe

SENSOR_STATES = ("warn", "critical", "stale")
TARGET_STATES = ("down", "up")


def fmt_seconds(s: float) -> str:
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


@dataclass(frozen=True, slots=True)
class Match:
    """At least `at_least` (None: all) of `sensors` or `targets` are in state `is_`,
    or (sensors) projected to reach critical within `critical_within` seconds."""

    sensors: tuple[str, ...] = ()
    targets: tuple[TargetId, ...] = ()
    is_: str | None = None
    at_least: int | None = 1
    critical_within: float | None = None


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Rule, ...]


Rule = Match | AnyOf | AllOf


def _sensor_hit(m: Match, h: SensorHealth, now: float) -> str | None:
    shown = "no reading" if h.value is None else describe(h.spec, h.value)
    if m.critical_within is not None:
        # A stale sensor is judged on its last reading, as levels are below: a projection
        # that held does not clear because the sensor then went quiet.
        last = h.last_at if h.level is Level.STALE else None
        ttc = h.projected(now if last is None else last)
        if ttc is not None and ttc <= m.critical_within:
            when = "critical" if ttc == 0 else f"critical in {fmt_seconds(ttc)}"
            return f"{h.name} {shown} {when}" + ("" if last is None else " (stale)")
        return None
    if m.is_ == "stale":
        return f"{h.name} stale" if h.level is Level.STALE else None
    want = Level.CRITICAL if m.is_ == "critical" else Level.WARN
    # Levels from readings: a stale sensor keeps its last reading's level here, so an
    # alarm already raised does not clear because the sensor then went quiet.
    level = h.value_level
    if level in (Level.CRITICAL, Level.WARN) and (want is Level.WARN or level is want):
        return f"{h.name} {shown} {level}"
    return None


def evaluate(
    rule: Rule,
    sensors: Mapping[str, SensorHealth],
    targets: Mapping[TargetId, State],
    now: float,
) -> str | None:
    """The reason the rule holds, or None."""
    if isinstance(rule, AnyOf):
        for r in rule.items:
            why = evaluate(r, sensors, targets, now)
            if why is not None:
                return why
        return None
    if isinstance(rule, AllOf):
        whys = []
        for r in rule.items:
            why = evaluate(r, sensors, targets, now)
            if why is None:
                return None
            whys.append(why)
        return " and ".join(whys)
    hits: list[str] = []
    for name in rule.sensors:
        h = sensors.get(name)
        hit = None if h is None else _sensor_hit(rule, h, now)
        if hit is not None:
            hits.append(hit)
    want = State.DOWN if rule.is_ == "down" else State.UP
    hits += [f"{t} {rule.is_}" for t in rule.targets if targets.get(t) is want]
    names = len(rule.sensors) + len(rule.targets)
    need = names if rule.at_least is None else rule.at_least
    if len(hits) < need or not hits:
        return None
    if names == 1:
        return hits[0]
    return f"{len(hits)} of {names}: " + ", ".join(hits)


@dataclass(frozen=True, slots=True)
class SiteSpec:
    rule: Rule | None = None
    hold: float = 300.0
    return_mode: str = "auto"  # "auto" | "manual"


@dataclass(slots=True)
class SitePolicy:
    spec: SiteSpec
    state: SiteState = SiteState.NORMAL
    since: float = 0.0
    reason: str = "no evacuation rule holds"
    forced: bool = False
    holding: str | None = None  # why the rule holds now, None when clear
    clear_since: float | None = None

    @property
    def evacuating(self) -> str | None:
        """The reason the site is evacuating, or None."""
        return self.reason if self.state is SiteState.EVACUATING else None

    def evaluate(self, holding: str | None, now: float) -> SiteChange | None:
        self.holding = holding
        if holding is not None:
            self.clear_since = None
            if self.state is SiteState.NORMAL:
                return self._move(SiteState.EVACUATING, now, holding)
            if not self.forced:
                self.reason = holding  # say what holds now, not what first held
            return None
        if self.state is SiteState.NORMAL or self.forced:
            return None
        if self.clear_since is None:
            self.clear_since = now
        if self.spec.return_mode == "auto" and now >= self.clear_since + self.spec.hold:
            why = f"evacuation rule clear for {self.spec.hold:g}s"
            return self._move(SiteState.NORMAL, self.clear_since + self.spec.hold, why)
        return None

    def next_wakeup(self) -> float | None:
        if (
            self.state is SiteState.EVACUATING
            and not self.forced
            and self.clear_since is not None
            and self.spec.return_mode == "auto"
        ):
            return self.clear_since + self.spec.hold
        return None

    def force(self, on: bool, now: float, by: str = "operator") -> SiteChange | None:
        """Operator (or drill) evacuation on/off. Off refuses while the rule still holds."""
        if on:
            self.forced = True
            if self.state is SiteState.EVACUATING:
                self.reason = f"forced by {by}"
                return None
            return self._move(SiteState.EVACUATING, now, f"forced by {by}")
        if self.holding is not None:
            raise ValueError(f"cannot return: the evacuation rule still holds ({self.holding})")
        self.forced = False
        return self.end(now, f"evacuation ended by {by}")

    def end(self, now: float, why: str) -> SiteChange | None:
        """Return now, without the `hold` (an operator's or a drill's word, rule clear)."""
        if self.state is SiteState.NORMAL or self.holding is not None:
            return None
        return self._move(SiteState.NORMAL, now, why)

    def restore(self, evacuating: bool, forced: bool, now: float) -> None:
        """After a restart: resume an evacuation; the rule must then be clear for `hold`."""
        self.forced = forced
        if evacuating or forced:
            self.state, self.since = SiteState.EVACUATING, now
            self.reason = "forced by operator" if forced else "evacuation restored after restart"

    def _move(self, new: SiteState, at: float, why: str) -> SiteChange:
        c = SiteChange(self.state, new, at, why, self.forced)
        self.state, self.since, self.reason = new, at, why
        if new is SiteState.NORMAL:
            self.clear_since = None
        return c
