"""LinkHealth: first report as is, down at once, up only after up_hold, maintenance."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.core.events import State, Transition
from trunkguard.core.ids import parse_target as T
from trunkguard.core.link import LinkHealth, LinkParams

U, D, M = State.UP, State.DOWN, State.MAINTENANCE


def link(up_hold: float = 5.0, down_hold: float = 0.0) -> LinkHealth:
    return LinkHealth(T("link:uplink"), LinkParams(up_hold, down_hold))


def test_first_report_is_taken_as_it_is() -> None:
    lh = link()
    assert lh.state is State.UNKNOWN and lh.due() is None
    t = lh.observe(False, "no carrier", 3.0)
    assert t == Transition(T("link:uplink"), State.UNKNOWN, D, 3.0, "no carrier")
    lh = link()
    t = lh.observe(True, "carrier, gateway reachable", 3.0)
    assert t and t.new is U and t.at == 3.0  # no up_hold for the start-up dump
    assert lh.due() is None


def test_down_is_immediate_by_default() -> None:
    lh = link()
    lh.observe(True, "carrier", 0)
    t = lh.observe(False, "carrier lost", 42.5)
    assert t and t.old is U and t.new is D and t.at == 42.5 and t.reason == "carrier lost"
    assert lh.state is D and lh.since == 42.5 and lh.due() is None


def test_up_only_after_up_hold_and_settled_at_the_due_time() -> None:
    lh = link(up_hold=5)
    lh.observe(False, "no carrier", 0)
    assert lh.observe(True, "carrier", 10) is None
    assert lh.state is D and lh.due() == 15
    assert lh.observe(True, "gateway reachable", 12) is None  # same view: hold not restarted
    assert lh.due() == 15
    assert lh.tick(14.999) is None and lh.state is D
    t = lh.tick(17)  # a late tick still dates the change when the hold expired
    assert t and t.new is U and t.at == 15 and t.reason == "up for 5s: gateway reachable"
    assert lh.due() is None and lh.tick(100) is None


def test_a_report_after_the_hold_settles_without_a_tick() -> None:
    lh = link(up_hold=5)
    lh.observe(False, "no carrier", 0)
    lh.observe(True, "carrier", 10)
    t = lh.observe(True, "carrier", 20)
    assert t and t.new is U and t.at == 15


def test_a_flap_restarts_the_up_hold() -> None:
    lh = link(up_hold=5)
    lh.observe(False, "no carrier", 0)
    lh.observe(True, "carrier", 10)
    assert lh.observe(False, "carrier lost", 14) is None  # already down: nothing to say
    assert lh.due() is None
    lh.observe(True, "carrier", 16)
    assert lh.due() == 21
    assert lh.tick(20) is None
    t = lh.tick(21)
    assert t and t.new is U and t.at == 21


def test_down_hold_rides_out_a_blip_but_not_an_outage() -> None:
    lh = link(up_hold=5, down_hold=1.0)
    lh.observe(True, "carrier", 0)
    assert lh.observe(False, "carrier lost", 10) is None
    assert lh.due() == 11
    assert lh.observe(True, "carrier", 10.5) is None  # back within down_hold
    assert lh.due() is None and lh.state is U
    assert lh.tick(30) is None and lh.state is U
    lh.observe(False, "carrier lost", 40)
    t = lh.tick(41)
    assert t and t.new is D and t.at == 41 and t.reason == "carrier lost"


def test_maintenance_hides_the_kernel_and_reveals_the_settled_view() -> None:
    lh = link(up_hold=5)
    lh.observe(True, "carrier", 0)
    t = lh.set_maintenance(True, 1)
    assert t and t.new is M and t.reason == "maintenance on (operator)"
    assert lh.set_maintenance(True, 2) is None
    assert lh.observe(False, "carrier lost", 3) is None and lh.state is M
    assert lh.observe(True, "carrier", 4) is None
    assert lh.tick(9) is None and lh.state is M and lh.settled is U  # settled underneath
    lh.observe(False, "carrier lost", 10)
    t = lh.set_maintenance(False, 11)
    assert t and t.new is D and t.at == 11 and "link is down" in t.reason
    assert lh.set_maintenance(False, 12) is None


def test_maintenance_off_while_up_is_still_held_reveals_down_then_up_on_time() -> None:
    lh = link(up_hold=5)
    lh.observe(False, "no carrier", 0)
    lh.set_maintenance(True, 1)
    lh.observe(True, "carrier", 2)
    t = lh.set_maintenance(False, 4)
    assert t and t.new is D
    assert lh.due() == 7
    t = lh.tick(7)
    assert t and t.new is U and t.at == 7


def test_maintenance_before_the_first_report() -> None:
    lh = link()
    lh.set_maintenance(True, 0)
    assert lh.observe(True, "carrier", 1) is None and lh.state is M
    t = lh.set_maintenance(False, 2)
    assert t and t.new is U


def test_reset_keeps_the_state_and_applies_the_new_hold() -> None:
    lh = link(up_hold=5)
    lh.observe(False, "no carrier", 0)
    lh.observe(True, "carrier", 10)
    lh.reset(LinkParams(up_hold=30))
    assert lh.state is D and lh.due() == 40
    assert lh.tick(15) is None
    t = lh.tick(40)
    assert t and t.reason == "up for 30s: carrier"


def _run(
    lh: LinkHealth, reports: list[tuple[float, bool]], end: float
) -> list[tuple[Transition, bool]]:
    """Feed reports, ticking at every due time in between as the engine's timer does;
    each transition comes with whether the timer (True) or a report made it."""
    out: list[tuple[Transition, bool]] = []
    for at, up in [*reports, (end, None)]:
        while (due := lh.due()) is not None and due <= at:
            t = lh.tick(due)
            assert t is not None  # a due time always settles something
            out.append((t, True))
        if up is not None:
            t = lh.observe(up, "carrier" if up else "no carrier", at)
            if t is not None:
                out.append((t, False))
    return out


@settings(max_examples=300, deadline=None)
@given(
    up_hold=st.sampled_from([0.5, 2.0, 5.0]),
    flaps=st.lists(
        st.tuples(st.floats(0.0, 0.999), st.floats(0.001, 20.0)), min_size=1, max_size=40
    ),
    ticks=st.lists(st.floats(0.0, 1000.0), max_size=20),
)
def test_a_link_flapping_faster_than_up_hold_never_comes_up(
    up_hold: float, flaps: list[tuple[float, float]], ticks: list[float]
) -> None:
    """Property: up periods shorter than up_hold (fractions of it), whatever the down
    periods and whenever the timer fires, never make the link up."""
    lh = link(up_hold=up_hold)
    assert lh.observe(False, "no carrier", 0.0) is not None
    now = 0.0
    tick_at = sorted(ticks)
    for up_frac, down_for in flaps:
        events = [(now + 0.001, True), (now + 0.001 + up_frac * up_hold, False)]
        now = events[-1][0] + down_for
        for at, up in events:
            while tick_at and tick_at[0] < at:
                assert lh.tick(tick_at.pop(0)) is None
            assert lh.tick(at) is None  # the timer firing just as the report comes
            assert lh.observe(up, "flap", at) is None
            assert lh.state is D
    assert lh.tick(now + 1000) is None and lh.state is D


@settings(max_examples=300, deadline=None)
@given(
    up_hold=st.sampled_from([0.0, 1.0, 5.0]),
    down_hold=st.sampled_from([0.0, 0.5, 3.0]),
    gaps=st.lists(st.tuples(st.floats(0.01, 12.0), st.booleans()), min_size=1, max_size=40),
)
def test_every_change_was_held_and_the_final_state_is_the_held_view(
    up_hold: float, down_hold: float, gaps: list[tuple[float, bool]]
) -> None:
    """Property: after the first report, every transition to up (down) happened when the
    kernel had said up (down) continuously for up_hold (down_hold), transitions
    alternate, and a view held long enough is always the link's state in the end."""
    lh = link(up_hold, down_hold)
    reports: list[tuple[float, bool]] = []
    at = 0.0
    for gap, up in gaps:
        reports.append((at, up))
        at += gap
    end = at + max(up_hold, down_hold) + 1.0
    out = _run(lh, reports, end)

    def view_since(t: float, by_tick: bool) -> tuple[bool, float]:
        """The kernel's view at t (just before t for a timer) and since when it held."""
        cur = [r for r in reports if r[0] < t or (r[0] == t and not by_tick)]
        up = cur[-1][1]
        since = cur[-1][0]
        for at_, u in reversed(cur):
            if u != up:
                break
            since = at_
        return up, since

    first, by_tick = out[0]
    assert first.old is State.UNKNOWN and first.at == 0.0 and not by_tick
    for (prev, _), (t, by_tick) in itertools.pairwise(out):
        assert prev.new is not t.new and t.old is prev.new and t.at >= prev.at
        up, since = view_since(t.at, by_tick)
        assert up is (t.new is U)
        assert t.at - since >= (up_hold if up else down_hold) - 1e-9
    assert lh.state is (U if reports[-1][1] else D)
