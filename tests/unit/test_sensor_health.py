"""SensorHealth: thresholds with hysteresis, bool sensors, trend, staleness."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.core.sensor import Level, Reading, SensorChange, SensorHealth, SensorSpec

ROOM = SensorSpec("room", warn=27.0, critical=32.0, hysteresis=1.0, window=300.0, unit="°C")
# Too low is bad: e.g. a coolant loop pressure in bar.
PRESSURE = SensorSpec("loop", warn=2.0, critical=1.5, direction="below", hysteresis=0.2)
CHILLER = SensorSpec("chiller", kind="bool", critical_when=False)


def levels(h: SensorHealth, values: list[Reading], start: float = 0.0) -> list[Level]:
    out = []
    for i, v in enumerate(values):
        h.observe(v, start + 10.0 * i)
        out.append(h.level)
    return out


def test_no_reading_is_unknown() -> None:
    h = SensorHealth(ROOM)
    assert h.level is Level.UNKNOWN and h.value is None and h.reason == "no reading yet"
    assert h.rate_per_minute() is None and h.time_to_critical(0) is None


def test_first_reading_is_classified_at_once_with_a_reason() -> None:
    c = SensorHealth(ROOM).observe(22.4, 5)
    assert c == SensorChange("room", Level.UNKNOWN, Level.OK, 5, "22.4°C")
    c = SensorHealth(ROOM).observe(27, 5)
    assert c and c.new is Level.WARN and c.reason == "27°C above warn 27°C"
    c = SensorHealth(ROOM).observe(40.5, 5)
    assert c and c.new is Level.CRITICAL and c.reason == "40.5°C above critical 32°C"


def test_same_level_gives_no_change_but_a_fresh_reason() -> None:
    h = SensorHealth(ROOM)
    h.observe(28, 0)
    assert h.observe(29.5, 10) is None
    assert h.level is Level.WARN and h.since == 0 and h.reason == "29.5°C above warn 27°C"


def test_hysteresis_above() -> None:
    h = SensorHealth(ROOM)
    assert levels(h, [26.9, 27.0, 26.1, 26.0, 25.99, 26.5, 27.0]) == [
        Level.OK, Level.WARN, Level.WARN, Level.WARN, Level.OK, Level.OK, Level.WARN,
    ]  # fmt: skip
    # From critical: stays down to 31, then warn (still with warn's hysteresis), then ok.
    assert levels(h, [32.0, 31.0, 30.9, 26.0, 25.9], start=100) == [
        Level.CRITICAL, Level.CRITICAL, Level.WARN, Level.WARN, Level.OK,
    ]  # fmt: skip


def test_hysteresis_below() -> None:
    h = SensorHealth(PRESSURE)
    assert levels(h, [2.1, 2.0, 2.15, 2.21, 1.5, 1.65, 1.71, 2.21]) == [
        Level.OK, Level.WARN, Level.WARN, Level.OK, Level.CRITICAL, Level.CRITICAL,
        Level.WARN, Level.OK,
    ]  # fmt: skip
    h = SensorHealth(PRESSURE)
    c = h.observe(1.4, 0)
    assert c and c.reason == "1.4 below critical 1.5"


def test_only_a_warn_threshold_and_no_threshold() -> None:
    h = SensorHealth(SensorSpec("humidity", warn=80.0, unit="%"))
    assert levels(h, [50, 99, 200]) == [Level.OK, Level.WARN, Level.WARN]
    h = SensorHealth(SensorSpec("humidity", critical=90.0))
    assert levels(h, [50, 89, 90]) == [Level.OK, Level.OK, Level.CRITICAL]
    h = SensorHealth(SensorSpec("info"))
    assert levels(h, [-1e9, 1e9]) == [Level.OK, Level.OK]


def test_bool_sensor_critical_when_false() -> None:
    h = SensorHealth(CHILLER)
    c = h.observe(True, 0)
    assert c and c.new is Level.OK and c.reason == "true"
    c = h.observe(False, 10)
    assert c and c.new is Level.CRITICAL and c.reason == "false (critical when false)"
    c = h.observe(True, 20)
    assert c and c.new is Level.OK  # no hysteresis for a bool
    assert not h.samples and h.time_to_critical(20) is None


def test_bool_sensor_warn_and_critical() -> None:
    spec = SensorSpec("door", kind="bool", warn_when=True)
    h = SensorHealth(spec)
    assert levels(h, [False, True]) == [Level.OK, Level.WARN]
    assert h.reason == "true (warn when true)"
    spec = SensorSpec("leak", kind="bool", warn_when=False, critical_when=True)
    assert levels(SensorHealth(spec), [False, True, False]) == [
        Level.WARN, Level.CRITICAL, Level.WARN,
    ]  # fmt: skip


def test_stale_from_creation_when_never_read() -> None:
    h = SensorHealth(SensorSpec("room", stale_after=60), created=100)
    assert h.stale_at() == 160
    assert h.tick(159.9) is None
    c = h.tick(200)
    assert c and c.new is Level.STALE and c.at == 160
    assert c.reason == "no reading in 60s since start"
    assert h.stale_at() is None and h.tick(1000) is None  # reported once


def test_stale_after_the_last_reading_with_the_last_error() -> None:
    h = SensorHealth(ROOM)
    h.observe(28, 10)
    h.failed("ipmitool: timeout after 5s")
    assert h.level is Level.WARN  # a failed reading alone changes nothing...
    assert h.stale_at() == 70 and h.tick(69) is None
    c = h.tick(70)  # ...until the sensor has been quiet for stale_after
    assert c and c.old is Level.WARN and c.new is Level.STALE and c.at == 70
    assert c.reason == "no reading for 60s (ipmitool: timeout after 5s)"
    assert h.value_level is Level.WARN  # the last reading's level is kept for rules
    assert h.time_to_critical(70) is None
    c = h.observe(26.5, 80)  # back: the reading decides, with warn's hysteresis
    assert c and c.old is Level.STALE and c.new is Level.WARN and h.error == ""
    assert h.stale_at() == 140


def test_a_reading_clears_the_error() -> None:
    h = SensorHealth(ROOM)
    h.failed("timeout")
    h.observe(22, 1)
    c = h.tick(61)
    assert c and c.reason == "no reading for 60s"


def test_rate_needs_three_samples_over_a_third_of_the_window() -> None:
    h = SensorHealth(ROOM)  # window 300 s: at least 100 s between first and last
    h.observe(22.0, 0)
    h.observe(23.0, 30)
    assert h.rate_per_minute() is None  # two points are a step, not a trend
    h.observe(24.0, 60)
    assert h.rate_per_minute() is None  # 60 s < 100 s
    h.observe(25.0, 90)
    assert h.rate_per_minute() is None
    h.observe(26.0, 100)  # 100 s span, but the last step is faster: least squares
    rate = h.rate_per_minute()
    assert rate is not None and 2.0 < rate < 3.0


def test_rate_forgets_samples_older_than_the_window() -> None:
    h = SensorHealth(ROOM)
    for i in range(31):  # flat for 300 s
        h.observe(22.0, 10.0 * i)
    assert h.rate_per_minute() == pytest.approx(0.0)
    for i in range(1, 31):  # then 1 degree a minute for 300 s: the flat part is gone
        h.observe(22.0 + i / 6, 300 + 10.0 * i)
    assert len(h.samples) == 31 and h.samples[0][0] == 300
    assert h.rate_per_minute() == pytest.approx(1.0)


def test_time_to_critical_on_a_ramp() -> None:
    h = SensorHealth(ROOM)
    for i in range(13):  # 2 degrees a minute from 20, every 10 s: 24 at t=120
        h.observe(20.0 + i / 3, 10.0 * i)
    assert h.rate_per_minute() == pytest.approx(2.0)
    assert h.time_to_critical(120) == pytest.approx(240.0)
    assert h.time_to_critical(150) == pytest.approx(210.0)  # the clock runs on
    assert h.time_to_critical(1000) == 0.0  # overdue: never negative


def test_time_to_critical_none_without_threshold_trend_or_when_falling() -> None:
    h = SensorHealth(SensorSpec("room", warn=27.0))
    levels(h, [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31])
    assert h.rate_per_minute() is not None and h.time_to_critical(110) is None
    h = SensorHealth(ROOM)
    levels(h, [30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19])
    assert h.time_to_critical(110) is None  # cooling down: never
    h = SensorHealth(ROOM)
    levels(h, [25.0] * 12)
    assert h.time_to_critical(110) is None  # flat


def test_a_stale_sensor_has_no_live_projection_but_keeps_its_last_one() -> None:
    h = SensorHealth(ROOM)
    for i in range(13):
        h.observe(20.0 + i / 3, 10.0 * i)
    assert h.projected(120) == h.time_to_critical(120) == pytest.approx(240.0)
    h.tick(180)
    assert h.level is Level.STALE and h.time_to_critical(180) is None
    assert h.projected(120) == pytest.approx(240.0)  # for rules: from the readings alone
    assert SensorHealth(ROOM).projected(0) is None
    assert SensorHealth(CHILLER).projected(0) is None


def test_time_to_critical_zero_while_critical_even_when_falling() -> None:
    h = SensorHealth(ROOM)
    levels(h, [36, 35, 34, 33, 32, 31.5])
    assert h.level is Level.CRITICAL and h.time_to_critical(50) == 0.0


def test_time_to_critical_below() -> None:
    h = SensorHealth(PRESSURE)
    for i in range(13):  # 3.0 bar falling 0.1 bar a minute
        h.observe(3.0 - i / 60, 10.0 * i)
    assert h.rate_per_minute() == pytest.approx(-0.1)
    # 2.8 at t=120, critical 1.5: 1.3 bar at 0.1 a minute
    assert h.time_to_critical(120) == pytest.approx(780.0)


def test_reset_keeps_readings_and_applies_new_thresholds_on_the_next_one() -> None:
    h = SensorHealth(ROOM)
    h.observe(28, 0)
    h.reset(SensorSpec("room", warn=30.0, critical=35.0))
    assert h.level is Level.WARN and h.value == 28 and len(h.samples) == 1
    c = h.observe(28, 10)
    assert c and c.new is Level.OK  # below the new warn's hysteresis (29)


# ---- properties -----------------------------------------------------------------------

SPECS = [ROOM, PRESSURE]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    which=st.sampled_from(["warn", "critical"]),
    start_inside=st.booleans(),
    fractions=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=60),
)
def test_level_never_flaps_within_the_hysteresis_band(
    spec: SensorSpec, which: str, start_inside: bool, fractions: list[float]
) -> None:
    """Property: once a level is set, values oscillating anywhere within the band between
    a threshold and threshold - hysteresis (the worse side excluded) never change it."""
    limit = spec.warn if which == "warn" else spec.critical
    assert limit is not None
    sign = 1.0 if spec.direction == "above" else -1.0
    h = SensorHealth(spec)
    # Start just past the threshold (its level), or just short of the band (the level
    # below it): values in the band keep either.
    h.observe(limit + sign * 0.05 if start_inside else limit - sign * (spec.hysteresis + 0.05), 0)
    first = h.level
    below = Level.OK if which == "warn" else Level.WARN
    assert first is (Level(which) if start_inside else below)
    for i, f in enumerate(fractions, 1):
        v = limit - sign * f * spec.hysteresis  # threshold - hysteresis <= v < threshold
        assert h.observe(v, float(i)) is None
        assert h.level is first


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    values=st.lists(st.floats(-10.0, 50.0, allow_nan=False), min_size=1, max_size=80),
)
def test_levels_change_only_across_a_threshold_or_its_hysteresis(
    spec: SensorSpec, values: list[float]
) -> None:
    """Property: a level is entered only at or beyond its threshold, and left for a better
    one only beyond threshold - hysteresis; the level is never stale or unknown."""
    sign = 1.0 if spec.direction == "above" else -1.0
    limits = {Level.WARN: spec.warn, Level.CRITICAL: spec.critical}
    rank = {Level.OK: 0, Level.WARN: 1, Level.CRITICAL: 2}
    h = SensorHealth(spec)
    for i, v in enumerate(values):
        c = h.observe(v, float(i))
        assert h.level in rank
        if c is None or c.old is Level.UNKNOWN:
            continue
        if rank[c.new] > rank[c.old]:
            limit = limits[c.new]
            assert limit is not None and sign * v >= sign * limit
        else:
            left = limits[c.old]
            assert left is not None and sign * v < sign * left - spec.hysteresis
            if c.new is not Level.OK:
                kept = limits[c.new]
                assert kept is not None and sign * v >= sign * kept - spec.hysteresis


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(-20.0, 25.0),
    rate=st.floats(0.001, 0.5),  # degrees per second
    span=st.floats(101.0, 299.0),  # within the window, and over a third of it
    n=st.integers(3, 40),
    later=st.floats(0.0, 100.0),
    above=st.booleans(),
)
def test_time_to_critical_of_a_linear_ramp_is_exact(
    start: float, rate: float, span: float, n: int, later: float, above: bool
) -> None:
    """Property: for readings on a straight line the projection is the line's own."""
    window = 300.0
    step = span / (n - 1)
    sign = 1.0 if above else -1.0
    critical = sign * 1000.0  # far enough that the ramp stays below it
    spec = SensorSpec(
        "x", critical=critical, direction="above" if above else "below", window=window
    )
    h = SensorHealth(spec)
    for i in range(n):
        h.observe(sign * (start + rate * step * i), step * i)
    last_t = step * (n - 1)
    last_v = start + rate * last_t
    now = last_t + later
    expected = (1000.0 - last_v) / rate - later
    assert h.rate_per_minute() == pytest.approx(sign * rate * 60.0, rel=1e-6)
    assert h.time_to_critical(now) == pytest.approx(expected, rel=1e-6, abs=1e-6)
