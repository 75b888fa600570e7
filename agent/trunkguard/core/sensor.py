"""Cooling and room sensors: thresholds with hysteresis, rate of rise, staleness.

Pure. The shell feeds readings with their timestamps; the machine keeps a level
(ok / warn / critical, or stale / unknown) and, for numbers, a least-squares fit
over `window` that gives the rate of rise and the projected time to `critical`.

The lesson behind `stale_after`: a chiller's backup failed and nobody noticed. A
sensor that stops reporting is itself an alarm, never silently "fine", so a
reading that does not come is a state of its own that rules can act on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from trunkguard.core.events import Level, SensorChange

Reading = float | bool


LEVELS = [lv.value for lv in Level]
_RANK = {Level.OK: 0, Level.WARN: 1, Level.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class SensorSpec:
    name: str
    kind: str = "number"  # "number" | "bool"
    warn: float | None = None
    critical: float | None = None
    direction: str = "above"  # "above": too high is bad (heat); "below": too low is bad
    hysteresis: float = 1.0
    window: float = 300.0
    stale_after: float = 60.0
    warn_when: bool | None = None  # bool sensors: the value that means warn
    critical_when: bool | None = None  # ... and critical (e.g. chiller running: false)
    unit: str = ""


def describe(spec: SensorSpec, value: Reading) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}{spec.unit}"


@dataclass(slots=True)
class SensorHealth:
    spec: SensorSpec
    created: float = 0.0
    level: Level = Level.UNKNOWN
    since: float = 0.0
    reason: str = "no reading yet"
    value: Reading | None = None
    last_at: float | None = None
    error: str = ""  # the last reading failure, kept for the stale reason
    value_level: Level = Level.UNKNOWN  # from the readings alone, hysteresis applied
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.spec.name

    def observe(self, value: Reading, at: float) -> SensorChange | None:
        self.value, self.last_at, self.error = value, at, ""
        if not isinstance(value, bool):
            self.samples.append((at, value))
            while self.samples and self.samples[0][0] < at - self.spec.window:
                self.samples.popleft()
        self.value_level, why = self._classify(value)
        return self._move(self.value_level, at, why)

    def failed(self, error: str) -> None:
        """A reading could not be taken; staleness (tick) decides when that matters."""
        self.error = error

    def tick(self, now: float) -> SensorChange | None:
        due = self.stale_at()
        if due is None or now < due:
            return None
        if self.last_at is None:
            why = f"no reading in {self.spec.stale_after:g}s since start"
        else:
            why = f"no reading for {self.spec.stale_after:g}s"
        return self._move(Level.STALE, due, why + (f" ({self.error})" if self.error else ""))

    def stale_at(self) -> float | None:
        if self.level is Level.STALE:
            return None
        return (self.created if self.last_at is None else self.last_at) + self.spec.stale_after

    def _classify(self, value: Reading) -> tuple[Level, str]:
        s = self.spec
        shown = describe(s, value)
        if isinstance(value, bool) or s.kind == "bool":
            flag = bool(value)
            if s.critical_when is not None and flag == s.critical_when:
                return Level.CRITICAL, f"{shown} (critical when {str(flag).lower()})"
            if s.warn_when is not None and flag == s.warn_when:
                return Level.WARN, f"{shown} (warn when {str(flag).lower()})"
            return Level.OK, shown
        sign = 1.0 if s.direction == "above" else -1.0
        v = sign * value
        prev = _RANK.get(self.value_level, 0)
        word = "above" if sign > 0 else "below"
        for level, limit in ((Level.CRITICAL, s.critical), (Level.WARN, s.warn)):
            if limit is None:
                continue
            # Entering needs the threshold; staying needs only threshold - hysteresis.
            need = sign * limit - (s.hysteresis if prev >= _RANK[level] else 0.0)
            if v >= need:
                return level, f"{shown} {word} {level} {limit:g}{s.unit}"
        return Level.OK, shown

    def _move(self, new: Level, at: float, why: str) -> SensorChange | None:
        if new is self.level:
            self.reason = why
            return None
        c = SensorChange(self.name, self.level, new, at, why)
        self.level, self.since, self.reason = new, at, why
        return c

    # ---- trend --------------------------------------------------------------------

    def _fit(self) -> tuple[float, float, float] | None:
        """(slope per second, fitted value at the last sample, its time), or None.

        Needs three samples spanning a third of the window: two points of a sensor
        with 1 degree resolution are a step, not a trend.
        """
        pts = self.samples
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < self.spec.window / 3:
            return None
        n = len(pts)
        t0 = pts[0][0]
        mt = sum(t - t0 for t, _ in pts) / n
        mv = sum(v for _, v in pts) / n
        sxx = sum((t - t0 - mt) ** 2 for t, _ in pts)
        if sxx <= 0:
            return None
        slope = sum((t - t0 - mt) * (v - mv) for t, v in pts) / sxx
        last_t = pts[-1][0]
        return slope, mv + slope * (last_t - t0 - mt), last_t

    def rate_per_minute(self) -> float | None:
        fit = self._fit()
        return None if fit is None else fit[0] * 60.0

    def time_to_critical(self, now: float) -> float | None:
        """Seconds until the fitted trend reaches `critical`; 0 when already there,
        None when there is no threshold, no trend yet, the trend points away, or the
        sensor is stale (no live figure to show; rules use projected())."""
        if self.level is Level.STALE:
            return None
        return self.projected(now)

    def projected(self, now: float) -> float | None:
        """time_to_critical from the readings alone, whether or not they still come."""
        s = self.spec
        if s.kind != "number" or s.critical is None:
            return None
        if self.value_level is Level.CRITICAL:
            return 0.0
        fit = self._fit()
        if fit is None:
            return None
        slope, fitted, last_t = fit
        sign = 1.0 if s.direction == "above" else -1.0
        towards = sign * slope
        if towards <= 0:
            return None
        left = (sign * s.critical - sign * fitted) / towards - (now - last_t)
        return max(left, 0.0)

    def snapshot(self) -> SensorHealth:
        """A copy to put back after a drill's simulated readings."""
        return replace(self, samples=deque(self.samples))

    def reset(self, spec: SensorSpec) -> None:
        """New settings on reload: keep the readings, re-derive the level on the next one."""
        self.spec = spec
