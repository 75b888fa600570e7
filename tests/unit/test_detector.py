"""The detector's guarantees, for any input: fewer than `fall` consecutive failed probes
never take an up trunk down, and a silence is declared within detection_bound() of its
start, probed on the watcher's own schedule (interval while stable, fast_interval while
a change is pending, overlapping probes, each failing `timeout` after it started)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.core.events import State, Verdict
from trunkguard.core.health import HealthParams, TargetHealth, detection_bound
from trunkguard.core.ids import trunk

A = trunk("a")
params = st.builds(
    HealthParams,
    interval=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    fast_interval=st.sampled_from([0.1, 0.2, 0.5]),
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
).filter(lambda p: p.fast_interval <= p.interval)


@settings(max_examples=300, deadline=None)
@given(p=params, oks=st.lists(st.booleans(), max_size=200))
def test_fewer_than_fall_consecutive_failures_never_take_an_up_target_down(
    p: HealthParams, oks: list[bool]
) -> None:
    th = TargetHealth(A, p)
    for i in range(p.rise):
        th.observe(Verdict(A, True, i, "200 OK"))
    assert th.state is State.UP
    run = 0
    for i, ok in enumerate(oks, start=p.rise):
        run = 0 if ok else run + 1
        was = th.state
        t = th.observe(Verdict(A, ok, i, "200 OK" if ok else "timeout"))
        if t is not None and t.new is State.DOWN:
            assert run >= p.fall, f"down after {run} consecutive failures"
        if was is State.UP and run >= p.fall:
            assert th.state is State.DOWN  # and `fall` of them always do


def _declared_down(p: HealthParams, timeout: float, silence: float, rtt: float) -> float:
    """Simulate the trunk watcher's schedule; return when the target went down."""
    th = TargetHealth(A, p)
    events: list[tuple[float, int, str]] = [(0.0, 0, "fire")]  # (time, seq, what)
    seq, due, last_start = 1, 0.0, 0.0

    def schedule(at: float, now: float) -> None:
        nonlocal seq, due
        at = max(at, now)
        if at < due or due < 0:
            due = at
            heapq.heappush(events, (at, seq, "fire"))
            seq += 1

    while events:
        now, _, what = heapq.heappop(events)
        if what == "fire":
            if now != due:
                continue  # superseded by an earlier reschedule
            due, last_start = -1.0, now
            ok = now < silence
            heapq.heappush(events, (now + (rtt if ok else timeout), seq, "ok" if ok else "fail"))
            seq += 1
            schedule(last_start + th.next_delay(), now)
        else:
            t = th.observe(Verdict(A, what == "ok", now, what))
            if t is not None and t.new is State.DOWN:
                return now
            schedule(last_start + th.next_delay(), now)
        assert now < silence + 60, "never declared down"
    raise AssertionError("schedule ran dry")


@settings(max_examples=300, deadline=None)
@given(
    p=params,
    timeout=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    phase=st.floats(0.0, 1.0),
    rtt=st.sampled_from([0.0005, 0.01, 0.09]),
)
def test_a_silence_is_declared_within_the_detection_bound(
    p: HealthParams, timeout: float, phase: float, rtt: float
) -> None:
    warmup = (p.rise + 2) * p.interval
    silence = warmup + phase * p.interval
    took = _declared_down(p, timeout, silence, rtt) - silence
    assert took <= detection_bound(p, timeout) + 1e-9, (took, detection_bound(p, timeout))
