from trunkguard.core.events import State, Verdict
from trunkguard.core.health import HealthParams, TargetHealth, detection_bound
from trunkguard.core.ids import parse_target as T

P = HealthParams(interval=1.0, fast_interval=0.2, rise=2, fall=3)


def v(ok: bool, at: float, hold: float | None = None) -> Verdict:
    return Verdict(T("trunk:a"), ok, at, "200 OK" if ok else "timeout after 500ms", hold)


def test_first_verdict_needs_rise_or_fall() -> None:
    th = TargetHealth(T("trunk:a"), P)
    assert th.pending and th.next_delay() == 0.2
    assert th.observe(v(True, 1)) is None
    t = th.observe(v(True, 2))
    assert t and t.old is State.UNKNOWN and t.new is State.UP
    assert "2 consecutive successes" in t.reason
    assert not th.pending and th.next_delay() == 1.0


def test_fall_hysteresis_and_fast_interval_while_pending() -> None:
    th = TargetHealth(T("trunk:a"), P)
    th.observe(v(True, 0))
    th.observe(v(True, 1))
    assert th.observe(v(False, 2)) is None
    assert th.pending and th.next_delay() == 0.2
    assert th.observe(v(True, 3)) is None  # one success resets the failure streak
    assert not th.pending
    th.observe(v(False, 4))
    th.observe(v(False, 5))
    t = th.observe(v(False, 6))
    assert t and t.new is State.DOWN and t.at == 6 and "3 consecutive failures" in t.reason


def test_retry_after_holds_down_and_ignores_early_successes() -> None:
    th = TargetHealth(T("trunk:a"), P)
    th.observe(v(True, 0))
    th.observe(v(True, 1))
    t = th.observe(Verdict(T("trunk:a"), False, 2, "503 Service Unavailable", hold_until=32))
    assert t and t.new is State.DOWN and "hold-down" in t.reason
    assert th.not_before() == 32
    assert th.observe(v(True, 10)) is None and th.observe(v(True, 11)) is None
    assert th.state is State.DOWN
    th.observe(v(True, 33))
    t = th.observe(v(True, 34))
    assert t and t.new is State.UP


def test_detection_bound_formula() -> None:
    assert detection_bound(P, 0.5) == 1.0 + 0.5 + 0.5 + 0.2
    assert detection_bound(HealthParams(1.0, 0.2, 2, 1), 0.5) == 1.5
    assert detection_bound(HealthParams(2.0, 1.0, 2, 2), 0.5) == 2.0 + 0.5 + 1.0
