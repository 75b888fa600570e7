"""Multipath route groups: every qualifying path active at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.core.events import State
from trunkguard.core.ids import parse_target as T
from trunkguard.core.policy import GroupPolicy, GroupSpec, PathSpec

A, B, C, R = T("trunk:a"), T("trunk:b"), T("trunk:c"), T("trunk:r")
U, D = State.UP, State.DOWN
PATHS = (PathSpec("pa", (A,)), PathSpec("pb", (B,)), PathSpec("pc", (C,)))
SPEC = GroupSpec("out", PATHS, "auto", 30.0, "multipath")


def states(a: State = U, b: State = U, c: State = U, r: State = U) -> dict[str, State]:
    return {A: a, B: b, C: c, R: r}


def test_all_qualifying_paths_are_active_in_preference_order() -> None:
    g = GroupPolicy(SPEC)
    d = g.evaluate(states(b=D), 0)
    assert d and d.kind == "initial" and str(d.new) == "pa+pc"
    assert list(g.members()) == ["pa", "pc"]


def test_a_path_leaves_at_once_and_rejoins_after_hold() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate(states(), 0)
    d = g.evaluate(states(b=D), 5, cause_at=4.8)
    assert d and d.kind == "failover" and str(d.new) == "pa+pc" and d.cause_at == 4.8
    assert "pb lost" in d.reason
    assert g.evaluate(states(), 10) is None  # back up, but not yet stable for hold
    assert g.next_wakeup() == 40
    d = g.evaluate(states(), 40)
    assert d and d.kind == "failback" and str(d.new) == "pa+pb+pc"
    assert g.next_wakeup() is None


def test_when_every_active_path_is_gone_whatever_qualifies_takes_over_at_once() -> None:
    g = GroupPolicy(SPEC)
    g.evaluate(states(b=D, c=D), 0)
    assert str(g.active) == "pa"
    g.evaluate(states(b=U, c=D), 1)  # pb qualifies from 1, joins at 31
    d = g.evaluate(states(a=D, b=U, c=D), 2)
    assert d and d.kind == "failover" and str(d.new) == "pb"
    assert g.evaluate(states(a=D, b=D, c=D), 3) is None and g.alarm  # keep the last


def test_manual_failback_waits_for_the_operator() -> None:
    g = GroupPolicy(GroupSpec("out", PATHS, "manual", 30.0, "multipath"))
    g.evaluate(states(), 0)
    g.evaluate(states(c=D), 1)
    assert g.evaluate(states(), 1000) is None and str(g.active) == "pa+pb"
    assert g.next_wakeup() is None
    d = g.release(states(), 1001)
    assert d and d.kind == "manual" and str(d.new) == "pa+pb+pc"


def test_evacuation_uses_the_remote_paths_only() -> None:
    spec = GroupSpec("out", (*PATHS, PathSpec("dr", (R,), remote=True)), "auto", 30.0, "multipath")
    g = GroupPolicy(spec)
    assert str(g.evaluate(states(), 0).new) == "pa+pb+pc+dr"  # type: ignore[union-attr]
    d = g.evaluate(states(), 1, evacuate="room critical")
    assert d and str(d.new) == "dr" and d.kind == "evacuate" and "room critical" in d.reason
    d = g.evaluate(states(), 2)  # the site returns: every path at once, no second hold
    assert d and d.kind == "return" and str(d.new) == "pa+pb+pc+dr"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_members_always_qualify_unless_nothing_does(steps: list[tuple[bool, bool, bool]]) -> None:
    g = GroupPolicy(SPEC)
    for i, (a, b, c) in enumerate(steps):
        s = states(U if a else D, U if b else D, U if c else D)
        g.evaluate(s, i * 7.0)
        if g.active is not None and (a or b or c):
            up = {"pa": a, "pb": b, "pc": c}
            assert all(up[m] for m in g.members())
            assert list(g.members()) == [p.name for p in PATHS if p.name in g.members()]  # order
