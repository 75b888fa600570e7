import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lib.core import StepEngine as Engine
from trunkguard.core.events import State, Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import parse_target as T
from trunkguard.core.policy import GroupPolicy, GroupSpec, PathSpec

A, B = T("trunk:a"), T("trunk:b")
SPEC = GroupSpec("out", (PathSpec("pa", (A,)), PathSpec("pb", (B,))), "auto", 30.0)
U, D = State.UP, State.DOWN


def test_no_decision_until_every_target_has_a_verdict() -> None:
    g = GroupPolicy(SPEC)
    assert g.evaluate({A: U, B: State.UNKNOWN}, 1) is None
    assert not g.ready
    d = g.evaluate({A: U, B: D}, 2)
    assert d and d.kind == "initial" and str(d.new) == "pa" and g.ready


def test_failover_then_auto_failback_after_hold() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate({A: U, B: U}, 0)
    d = g.evaluate({A: D, B: U}, 10, cause_at=9.5)
    assert d and d.kind == "failover" and str(d.new) == "pb" and d.cause_at == 9.5
    assert "trunk:a down" in d.reason
    assert g.evaluate({A: U, B: U}, 20) is None
    assert g.next_wakeup() == 50
    assert g.evaluate({A: U, B: U}, 49.9) is None
    d = g.evaluate({A: U, B: U}, 50)
    assert d and d.kind == "failback" and str(d.new) == "pa"
    assert g.next_wakeup() is None


def test_flapping_primary_restarts_hold() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate({A: U, B: U}, 0)
    g.evaluate({A: D, B: U}, 1)
    g.evaluate({A: U, B: U}, 2)
    g.evaluate({A: D, B: U}, 20)
    g.evaluate({A: U, B: U}, 25)
    assert g.next_wakeup() == 55
    assert g.evaluate({A: U, B: U}, 40) is None and str(g.active) == "pb"


def test_manual_failback_waits_for_operator() -> None:
    g = GroupPolicy(GroupSpec("out", SPEC.paths, "manual", 30.0))
    g.evaluate({A: U, B: U}, 0)
    g.evaluate({A: D, B: U}, 1)
    assert g.evaluate({A: U, B: U}, 1000) is None and str(g.active) == "pb"
    assert g.next_wakeup() is None
    d = g.release({A: U, B: U}, 1001)
    assert d and d.kind == "manual" and str(d.new) == "pa"


def test_no_path_keeps_last_and_alarms() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate({A: U, B: U}, 0)
    assert g.evaluate({A: D, B: D}, 1) is None
    assert str(g.active) == "pa" and g.alarm
    d = g.evaluate({A: D, B: U}, 2)
    assert d and str(d.new) == "pb" and not g.alarm


def test_pin_holds_while_path_qualifies_then_drops() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate({A: U, B: U}, 0)
    d = g.pin("pb", {A: U, B: U}, 1)
    assert d and d.kind == "manual" and str(d.new) == "pb"
    assert g.evaluate({A: U, B: U}, 100) is None and str(g.active) == "pb"
    d = g.evaluate({A: U, B: D}, 101)
    assert d and str(d.new) == "pa" and g.pinned is None and "pinned path pb" in d.reason
    with pytest.raises(ValueError, match="no path"):
        g.pin("nope", {A: U, B: U}, 102)
    with pytest.raises(ValueError, match="does not qualify"):
        g.pin("pb", {A: U, B: D}, 102)


def test_path_without_requirements_is_last_resort() -> None:
    spec = GroupSpec("out", (PathSpec("pa", (A,)), PathSpec("remote", (), remote=True)), "auto", 5)
    g = GroupPolicy(spec)
    g.evaluate({A: D}, 0)
    assert str(g.active) == "remote"


PARAMS = HealthParams(interval=1.0, fast_interval=0.2, rise=2, fall=3)


@settings(max_examples=300, deadline=None)
@given(
    results=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=200),
    hold=st.sampled_from([0.5, 2.0, 10.0]),
    step=st.sampled_from([0.2, 1.0]),
)
def test_switches_never_outpace_rise_fall_and_hold(
    results: list[tuple[bool, bool]], hold: float, step: float
) -> None:
    """Property: whatever the probe results, the group changes path no more often than
    the hysteresis allows, every failback waited `hold`, and every change follows a
    target transition or an expired hold."""
    spec = GroupSpec("out", (PathSpec("pa", (A,)), PathSpec("pb", (B,))), "auto", hold)
    eng = Engine({A: PARAMS, B: PARAMS}, [spec])
    now = 0.0
    decisions, transitions = [], 0
    a_up_since: float | None = None
    for ok_a, ok_b in results:
        now += step
        made = []
        for target, ok in ((A, ok_a), (B, ok_b)):
            s = eng.observe(Verdict(target, ok, now, "x"))
            transitions += len(s.transitions)
            made += s.decisions
        made += eng.tick(now).decisions
        decisions += made
        if eng.targets[A].state is State.UP:
            a_up_since = now if a_up_since is None else a_up_since
        else:
            a_up_since = None
        for d in made:
            if d.kind == "failback":
                assert a_up_since is not None and now - a_up_since >= hold - 1e-9
    # Each target needs >= min(rise, fall) observations per transition.
    assert transitions <= 2 * (len(results) // min(PARAMS.rise, PARAMS.fall) + 1)
    # Every decision after the first is caused by a transition or a failback timer, and
    # path changes never exceed transitions (+1 initial, +failbacks which follow an up).
    assert len(decisions) <= transitions + 1
    for prev, nxt in itertools.pairwise(decisions):
        assert str(prev.new) != str(nxt.new)
        if nxt.kind == "failback":
            assert nxt.at - prev.at >= 0
