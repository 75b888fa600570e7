"""Evacuation rules (evaluate) and the site's own state (SitePolicy)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.core.events import State
from trunkguard.core.ids import parse_target as T
from trunkguard.core.sensor import Level, SensorHealth, SensorSpec
from trunkguard.core.site import (
    AllOf,
    AnyOf,
    Match,
    SiteChange,
    SitePolicy,
    SiteSpec,
    SiteState,
    evaluate,
    fmt_seconds,
)

ROOMS = ("room1", "room2", "room3")
SPEC = SensorSpec("room", warn=27.0, critical=32.0, window=300.0, stale_after=60.0)
NORMAL, EVAC = SiteState.NORMAL, SiteState.EVACUATING


def rooms(*values: float | None, at: float = 0.0) -> dict[str, SensorHealth]:
    out = {}
    for name, v in zip(ROOMS, values, strict=True):
        h = SensorHealth(SensorSpec(name, warn=27.0, critical=32.0, window=300.0))
        if v is not None:
            h.observe(v, at)
        out[name] = h
    return out


def chiller(running: bool) -> SensorHealth:
    h = SensorHealth(SensorSpec("chiller", kind="bool", critical_when=False))
    h.observe(running, 0)
    return h


def test_match_counts_sensors_at_warn_or_worse() -> None:
    rule = Match(sensors=ROOMS, is_="warn", at_least=2)
    assert evaluate(rule, rooms(22, 27.5, 26), {}, 0) is None
    why = evaluate(rule, rooms(22, 27.5, 33), {}, 0)
    assert why == "2 of 3: room2 27.5 warn, room3 33 critical"


def test_match_critical_only_counts_critical() -> None:
    rule = Match(sensors=ROOMS, is_="critical")
    assert evaluate(rule, rooms(31, 31.9, 27), {}, 0) is None
    assert evaluate(rule, rooms(31, 32, 27), {}, 0) == "1 of 3: room2 32 critical"


def test_match_all_and_single_sensor_wording() -> None:
    rule = Match(sensors=ROOMS, is_="warn", at_least=None)
    assert evaluate(rule, rooms(28, 28, 26.9), {}, 0) is None
    assert evaluate(rule, rooms(28, 28, 27), {}, 0) == (
        "3 of 3: room1 28 warn, room2 28 warn, room3 27 warn"
    )
    one = {"chiller": chiller(False)}
    rule = Match(sensors=("chiller",), is_="critical")
    assert evaluate(rule, one, {}, 0) == "chiller false critical"
    assert evaluate(rule, {"chiller": chiller(True)}, {}, 0) is None


def test_unknown_and_missing_sensors_never_hit() -> None:
    rule = Match(sensors=ROOMS, is_="warn")
    assert evaluate(rule, rooms(None, None, None), {}, 0) is None
    assert evaluate(rule, {}, {}, 0) is None
    rule = Match(sensors=(*ROOMS, "nowhere"), is_="warn", at_least=None)
    assert evaluate(rule, rooms(30, 30, 30), {}, 0) is None


def test_stale_match_and_a_stale_sensor_keeps_its_alarm() -> None:
    s = rooms(28, 22, None)
    for h in s.values():
        h.tick(100)  # room1, room2 read at 0, room3 never: all stale at 60
    assert all(h.level is Level.STALE for h in s.values())
    rule = Match(sensors=ROOMS, is_="stale", at_least=None)
    assert evaluate(rule, s, {}, 100) == "3 of 3: room1 stale, room2 stale, room3 stale"
    # A sensor that went quiet while at warn still counts as at warn.
    assert evaluate(Match(sensors=ROOMS, is_="warn"), s, {}, 100) == "1 of 3: room1 28 warn"


def test_projection_match() -> None:
    s = rooms(22, None, 22)
    for i in range(13):  # room2 climbs 2 degrees a minute: 24 at t=120, 32 at t=360
        s["room2"].observe(20.0 + i / 3, 10.0 * i)
    rule = Match(sensors=ROOMS, critical_within=600.0)
    assert evaluate(rule, s, {}, 120) == "1 of 3: room2 24 critical in 4m00s"
    assert evaluate(Match(sensors=ROOMS, critical_within=239.0), s, {}, 120) is None
    assert evaluate(Match(sensors=ROOMS, critical_within=239.0), s, {}, 121) is not None
    s["room1"].observe(40, 120)
    assert evaluate(rule, s, {}, 120) == ("2 of 3: room1 40 critical, room2 24 critical in 4m00s")


def test_a_projection_that_held_does_not_clear_when_the_sensor_goes_quiet() -> None:
    s = rooms(22, None, 22)
    for i in range(13):  # room2: 24 at t=120 and climbing 2 degrees a minute
        s["room2"].observe(20.0 + i / 3, 10.0 * i)
    rule = Match(sensors=ROOMS, critical_within=600.0)
    assert evaluate(rule, s, {}, 120) == "1 of 3: room2 24 critical in 4m00s"
    for h in s.values():
        h.tick(180)  # all quiet for 60 s: stale (a dying sensor in a heating room)
    assert s["room2"].level is Level.STALE
    assert s["room2"].time_to_critical(180) is None  # nothing to show as a live figure
    # ...but the rule is judged on its last reading, as levels are: still held.
    assert evaluate(rule, s, {}, 180) == "1 of 3: room2 24 critical in 4m00s (stale)"
    assert evaluate(rule, s, {}, 10_000) is not None
    # A stale sensor whose trend did not hold the rule does not start to hold it.
    flat = rooms(22, 22, 22)
    for i in range(13):
        flat["room1"].observe(22.0 + i / 60, 10.0 * i)  # 0.1 a minute: 80 min away
    for h in flat.values():
        h.tick(10_000)
    assert evaluate(rule, flat, {}, 10_000) is None


def test_target_match() -> None:
    rule = Match(targets=(T("link:a"), T("link:b")), is_="down", at_least=None)
    states = {T("link:a"): State.DOWN, T("link:b"): State.UP}
    assert evaluate(rule, {}, states, 0) is None
    states[T("link:b")] = State.DOWN
    assert evaluate(rule, {}, states, 0) == "2 of 2: link:a down, link:b down"
    states[T("link:b")] = State.MAINTENANCE
    assert evaluate(rule, {}, states, 0) is None  # maintenance is not down
    rule = Match(targets=(T("trunk:backup"),), is_="up")
    assert evaluate(rule, {}, {T("trunk:backup"): State.UP}, 0) == "trunk:backup up"
    assert evaluate(rule, {}, {}, 0) is None


def test_any_of_gives_the_first_reason_all_of_every_reason() -> None:
    s = {**rooms(28, 29, 22), "chiller": chiller(False)}
    warm = Match(sensors=ROOMS, is_="warn", at_least=2)
    stopped = Match(sensors=("chiller",), is_="critical")
    hot = Match(sensors=ROOMS, is_="critical")
    assert evaluate(AllOf((stopped, warm)), s, {}, 0) == (
        "chiller false critical and 2 of 3: room1 28 warn, room2 29 warn"
    )
    assert evaluate(AnyOf((hot, AllOf((stopped, warm)))), s, {}, 0) == (
        "chiller false critical and 2 of 3: room1 28 warn, room2 29 warn"
    )
    assert evaluate(AnyOf((warm, stopped)), s, {}, 0) == "2 of 3: room1 28 warn, room2 29 warn"
    s["chiller"] = chiller(True)
    assert evaluate(AllOf((stopped, warm)), s, {}, 0) is None
    assert evaluate(AnyOf((hot, AllOf((stopped, warm)))), s, {}, 0) is None


def test_fmt_seconds() -> None:
    assert fmt_seconds(0) == "0s"
    assert fmt_seconds(59.4) == "59s"
    assert fmt_seconds(59.6) == "1m00s"
    assert fmt_seconds(605) == "10m05s"


# ---- SitePolicy -----------------------------------------------------------------------


def test_evacuates_while_the_rule_holds_and_returns_after_hold() -> None:
    site = SitePolicy(SiteSpec(hold=300.0))
    assert site.evaluate(None, 0) is None and site.evacuating is None
    c = site.evaluate("room2 33 critical", 10)
    assert c == SiteChange(NORMAL, EVAC, 10, "room2 33 critical", False)
    assert site.evacuating == "room2 33 critical" and site.next_wakeup() is None
    assert site.evaluate("room2 34 critical", 20) is None
    assert site.evacuating == "room2 34 critical"  # what holds now
    assert site.evaluate(None, 100) is None
    assert site.clear_since == 100 and site.next_wakeup() == 400
    assert site.evaluate(None, 399.9) is None and site.state is EVAC
    c = site.evaluate(None, 400)
    assert c and c.old is EVAC and c.new is NORMAL and c.at == 400 and not c.forced
    assert c.reason == "evacuation rule clear for 300s"
    assert site.evacuating is None and site.next_wakeup() is None and site.clear_since is None


def test_a_late_evaluation_dates_the_return_when_the_hold_ended() -> None:
    site = SitePolicy(SiteSpec(hold=60.0))
    site.evaluate("x", 0)
    site.evaluate(None, 10)
    c = site.evaluate(None, 500)
    assert c and c.at == 70


def test_the_rule_holding_again_restarts_the_hold() -> None:
    site = SitePolicy(SiteSpec(hold=60.0))
    site.evaluate("x", 0)
    site.evaluate(None, 10)
    assert site.evaluate("x again", 50) is None and site.next_wakeup() is None
    site.evaluate(None, 60)
    assert site.next_wakeup() == 120
    assert site.evaluate(None, 119) is None
    c = site.evaluate(None, 120)
    assert c and c.new is NORMAL


def test_manual_return_waits_for_the_operator() -> None:
    site = SitePolicy(SiteSpec(hold=60.0, return_mode="manual"))
    site.evaluate("x", 0)
    with pytest.raises(ValueError, match=r"rule still holds \(x\)"):
        site.force(False, 5)
    site.evaluate(None, 10)
    assert site.next_wakeup() is None
    assert site.evaluate(None, 10_000) is None and site.state is EVAC
    c = site.force(False, 10_001)
    assert c and c.new is NORMAL and c.at == 10_001
    assert c.reason == "evacuation ended by operator"


def test_operator_force_and_cancel() -> None:
    site = SitePolicy(SiteSpec(hold=60.0))
    c = site.force(True, 5)
    assert c == SiteChange(NORMAL, EVAC, 5, "forced by operator", True)
    assert site.evaluate(None, 6) is None
    assert site.next_wakeup() is None and site.evaluate(None, 1000) is None  # no auto return
    assert site.evaluate("room1 33 critical", 1001) is None
    assert site.evacuating == "forced by operator"  # the operator's reason stands
    with pytest.raises(ValueError, match="rule still holds"):
        site.force(False, 1002)
    assert site.state is EVAC and site.forced
    site.evaluate(None, 1003)
    c = site.force(False, 1004)  # cancel: at once, no hold
    assert c and c.new is NORMAL and c.at == 1004 and not c.forced and not site.forced
    assert site.force(False, 1005) is None


def test_force_while_the_rule_evacuates_takes_it_over() -> None:
    site = SitePolicy(SiteSpec(hold=60.0))
    site.evaluate("x", 0)
    assert site.force(True, 1) is None
    assert site.forced and site.evacuating == "forced by operator"
    site.evaluate(None, 2)
    assert site.next_wakeup() is None and site.evaluate(None, 100) is None
    c = site.force(False, 101)
    assert c and c.new is NORMAL


def test_restore_resumes_and_needs_the_rule_clear_for_hold() -> None:
    site = SitePolicy(SiteSpec(hold=60.0))
    site.restore(evacuating=True, forced=False, now=1000)
    assert site.state is EVAC and site.since == 1000 and not site.forced
    assert site.evacuating == "evacuation restored after restart"
    assert site.next_wakeup() is None  # the rule has not been seen clear yet
    assert site.evaluate(None, 1005) is None and site.next_wakeup() == 1065
    c = site.evaluate(None, 1065)
    assert c and c.new is NORMAL
    site = SitePolicy(SiteSpec(hold=60.0))
    site.restore(evacuating=True, forced=True, now=0)
    assert site.forced and site.evacuating == "forced by operator"
    assert site.evaluate(None, 1000) is None and site.state is EVAC
    site = SitePolicy(SiteSpec(hold=60.0))
    site.restore(evacuating=False, forced=False, now=0)
    assert site.state is NORMAL


@settings(max_examples=300, deadline=None)
@given(
    hold=st.sampled_from([0.0, 30.0, 300.0]),
    seq=st.lists(st.tuples(st.floats(0.0, 200.0), st.booleans()), min_size=1, max_size=60),
)
def test_site_follows_the_rule_with_the_return_hold(
    hold: float, seq: list[tuple[float, bool]]
) -> None:
    """Property (auto return, no operator): after each evaluation the site is evacuating
    exactly when the rule held at the last evaluation or the current clear run is
    younger than `hold`; each return is dated clear start + hold."""
    site = SitePolicy(SiteSpec(hold=hold))
    now = 0.0
    ever_held = False
    clear_start: float | None = None
    for gap, held in seq:
        now += gap
        c = site.evaluate("x" if held else None, now)
        if held:
            ever_held, clear_start = True, None
        elif ever_held and clear_start is None:
            clear_start = now
        expect = ever_held and (clear_start is None or now < clear_start + hold)
        assert (site.state is EVAC) is expect
        if c is not None and c.new is NORMAL:
            assert clear_start is not None and c.at == clear_start + hold
            ever_held, clear_start = False, None
        wake = site.next_wakeup()
        if site.state is EVAC and clear_start is not None:
            assert wake == clear_start + hold and wake > now
        else:
            assert wake is None
