import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lib.core import StepEngine as Engine
from trunkguard.core.events import State, Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import parse_target as T
from trunkguard.core.policy import GroupSpec, PathSpec
from trunkguard.core.trunk import Quorum, TrunkHealth

P = HealthParams(interval=1.0, fast_interval=0.2, rise=1, fall=1)
X, Y = "192.0.2.1:5060", "[2001:db8::1]:5060"


def trunk(q: str | int) -> TrunkHealth:
    th = TrunkHealth(T("trunk:c"), P, Quorum.parse(q))
    th.set_dests([X, Y], 0)
    return th


def feed(th: TrunkHealth, key: str, ok: bool, at: float):  # type: ignore[no-untyped-def]
    return th.observe(key, Verdict(T("trunk:c"), ok, at, "200 OK" if ok else "timeout after 500ms"))


def test_any_stays_up_when_one_of_two_dies() -> None:
    th = trunk("any")
    _, t = feed(th, X, True, 1)
    assert t and t.new is State.UP and "1 of 2 destinations up (healthy_when any)" in t.reason
    feed(th, Y, True, 2)
    dt, t = feed(th, Y, False, 3)
    assert dt and dt.new is State.DOWN and str(dt.target) == f"trunk:c/{Y}"
    assert t is None and th.state is State.UP
    _, t = feed(th, X, False, 4)
    assert t and t.new is State.DOWN and f"{X}: 1 consecutive failures" in t.reason


def test_all_goes_down_when_one_dies() -> None:
    th = trunk("all")
    assert feed(th, X, True, 1)[1] is None  # Y still unknown: undecided
    _, t = feed(th, Y, True, 2)
    assert t and t.new is State.UP
    _, t = feed(th, Y, False, 3)
    assert t and t.new is State.DOWN


def test_new_unknown_destination_does_not_flip_a_healthy_trunk() -> None:
    th = trunk("all")
    feed(th, X, True, 1)
    feed(th, Y, True, 2)
    assert th.set_dests([X, Y, "198.51.100.7:5060"], 3) is None
    assert th.state is State.UP
    t = th.set_dests([], 4)
    assert t is None and th.state is State.UP  # no destinations: nothing decides


def test_n_of_m_and_late_results_for_removed_destinations() -> None:
    th = trunk(2)
    feed(th, X, True, 1)
    _, t = feed(th, Y, True, 2)
    assert t and t.new is State.UP
    th.set_dests([X], 3)
    assert th.state is State.DOWN  # 1 destination can never make 2
    assert feed(th, Y, True, 4) == (None, None)


def test_quorum_parse() -> None:
    assert Quorum.parse("any").need(3) == 1 and Quorum.parse("all").need(3) == 3
    assert Quorum.parse(2).need(5) == 2
    for bad in ("most", 0, True, -1):
        with pytest.raises(ValueError):
            Quorum.parse(bad)  # type: ignore[arg-type]


def test_engine_reports_destination_changes_but_routes_on_the_trunk() -> None:
    spec = GroupSpec(
        "out", (PathSpec("c", (T("trunk:c"),)), PathSpec("d", (T("trunk:d"),))), "auto", 5
    )
    eng = Engine({T("trunk:c"): P, T("trunk:d"): P}, [spec], {T("trunk:c"): Quorum.parse("any")})
    eng.set_dests(T("trunk:c"), [X, Y], 0)
    eng.observe(Verdict(T("trunk:d"), True, 0, "ok"))
    step = eng.observe(Verdict(T("trunk:c"), True, 1, "ok"), X)
    assert [str(d.new) for d in step.decisions] == ["c"]
    eng.observe(Verdict(T("trunk:c"), True, 1, "ok"), Y)
    step = eng.observe(Verdict(T("trunk:c"), False, 2, "timeout"), Y)
    assert not step.transitions and not step.decisions
    assert [str(t.target) for t in step.dest_transitions] == [f"trunk:c/{Y}"]


@settings(max_examples=300, deadline=None)
@given(
    q=st.sampled_from(["any", "all", 1, 2, 3]),
    n=st.integers(1, 4),
    seq=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=60),
)
def test_decided_state_always_agrees_with_the_quorum(
    q: str | int, n: int, seq: list[tuple[int, bool]]
) -> None:
    keys = [f"192.0.2.{i}:5060" for i in range(n)]
    th = TrunkHealth(T("trunk:c"), P, Quorum.parse(q))
    th.set_dests(keys, 0)
    for at, (i, ok) in enumerate(seq, 1):
        if i < n:
            feed(th, keys[i], ok, at)
        states = [d.state for d in th.dests.values()]
        up, unknown = states.count(State.UP), states.count(State.UNKNOWN)
        need = th.quorum.need(n)
        if up >= need:
            assert th.state is State.UP
        elif up + unknown < need:
            assert th.state is State.DOWN
        elif th.state is State.UNKNOWN:
            assert unknown > 0


def test_maintenance_is_sticky_and_restores_probed_state() -> None:
    th = trunk("any")
    feed(th, X, True, 1)
    t = th.set_maintenance(True, 2)
    assert t and t.new is State.MAINTENANCE
    feed(th, X, False, 3)
    feed(th, Y, False, 4)
    assert th.state is State.MAINTENANCE  # probes go on underneath
    t = th.set_maintenance(False, 10)
    assert t and t.new is State.DOWN and "probes say down" in t.reason
