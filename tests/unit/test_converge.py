"""The convergence loop against a small in-memory actuator."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest

from tests.lib.core import routes, texts
from tests.lib.reports import Reports
from trunkguard.act.base import Actuator, ActuatorError
from trunkguard.act.converge import ApplyReport, Converger
from trunkguard.core.ids import Paths

WAIT = 5.0  # safety net only: every wait below ends on an event


class FakeActuator:
    """A 'real system' that is a dict; apply copies the desired state into it."""

    kind = "fake"

    def __init__(self) -> None:
        self.name = "fake"
        self.real: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.apply_errors: list[BaseException] = []  # raised by the next apply calls
        self.effective = True  # False: apply "succeeds" but changes nothing
        self.activity = asyncio.Event()
        self.verifies = 0
        self.verified = asyncio.Event()

    async def apply(self, desired: Mapping[str, Paths]) -> None:
        desired = texts(desired)
        self.calls.append(("apply", dict(desired)))
        self.activity.set()
        if self.apply_errors:
            raise self.apply_errors.pop(0)
        if self.effective:
            self.real.update(desired)

    async def verify(self, desired: Mapping[str, Paths]) -> bool:
        desired = texts(desired)
        self.calls.append(("verify", dict(desired)))
        self.activity.set()
        self.verifies += 1
        self.verified.set()
        return all(self.real.get(g) == p for g, p in desired.items())

    async def close(self) -> None:
        pass

    def applies(self) -> int:
        return sum(1 for kind, _ in self.calls if kind == "apply")


@asynccontextmanager
async def running(conv: Converger) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(conv.run())
    try:
        yield task
        assert not task.done(), "the loop must never end by itself"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def make(act: FakeActuator, reports: Reports, **kw: float) -> Converger:
    loop = asyncio.get_running_loop()
    return Converger(act, clock=loop.time, on_report=reports, **kw)


def test_fake_is_an_actuator() -> None:
    assert isinstance(FakeActuator(), Actuator)


async def test_nothing_happens_before_first_set_desired() -> None:
    act, reports = FakeActuator(), Reports()
    conv = make(act, reports, drift_interval=0.01, backoff_initial=0.01)
    async with running(conv):
        # A negative can only be observed over a window: 10 drift intervals.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await act.activity.wait()
        assert act.calls == [] and reports.items == []
        assert conv.desired is None and not conv.converged
        conv.set_desired(routes({"g": "A"}))
        await reports.count(1)
        assert act.calls[0] == ("verify", {"g": "A"})


async def test_no_apply_when_already_in_place() -> None:
    act, reports = FakeActuator(), Reports()
    act.real = {"g": "A"}
    conv = make(act, reports)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        (r,) = await reports.count(1)
    assert r.ok and not r.changed and r.trigger == "desired" and r.attempt == 1
    assert act.applies() == 0
    assert conv.converged


class ReadingActuator(FakeActuator):
    """An actuator whose apply() reads before it writes (like netlink)."""

    reads_before_write = True

    async def apply(self, desired: Mapping[str, str]) -> bool:
        await super().apply(desired)
        return self.real != self.before

    before: dict[str, str] = {}


async def test_reading_actuator_skips_the_pre_check_and_reports_no_change() -> None:
    act, reports = ReadingActuator(), Reports()
    act.real = {"g": "A"}
    act.before = dict(act.real)
    conv = make(act, reports)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        (r,) = await reports.count(1)
        assert r.ok and not r.changed
        assert [k for k, _ in act.calls] == ["apply"]  # no verify before, nothing to read back
        conv.set_desired(routes({"g": "B"}))
        r = await reports.wait(lambda r: texts(r.desired) == {"g": "B"})
    assert r.ok and r.changed
    assert [k for k, _ in act.calls] == ["apply", "apply", "verify"]


async def test_apply_then_verify() -> None:
    act, reports = FakeActuator(), Reports()
    conv = make(act, reports)
    desired = {"g": "A", "h": "X"}
    async with running(conv):
        conv.set_desired(desired)
        desired["g"] = "mutated"  # the converger keeps its own copy
        (r,) = await reports.count(1)
        assert conv.converged
    assert r.ok and r.changed and r.error is None
    assert texts(r.desired) == {"g": "A", "h": "X"} == dict(conv.desired or {})
    assert [k for k, _ in act.calls] == ["verify", "apply", "verify"]
    assert r.started_at <= r.finished_at


async def test_mismatch_after_apply_is_a_verify_error() -> None:
    act, reports = FakeActuator(), Reports()
    act.effective = False
    conv = make(act, reports, backoff_initial=0.01)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        r = await reports.wait(lambda r: not r.ok)
        second = await reports.wait(lambda r: r.attempt == 2)
    assert r.error_reason == "verify" and r.changed
    assert second.trigger == "retry" and not second.ok
    assert not conv.converged


async def test_retry_with_exponential_backoff_then_success() -> None:
    act, reports = FakeActuator(), Reports()
    act.apply_errors = [ActuatorError("exit", "boom") for _ in range(5)]
    conv = make(act, reports, backoff_initial=0.01, backoff_max=0.04)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        done = await reports.wait(lambda r: r.ok)
    rs = reports.items
    assert [r.ok for r in rs] == [False] * 5 + [True]
    assert [r.attempt for r in rs] == [1, 2, 3, 4, 5, 6]
    assert [r.trigger for r in rs] == ["desired"] + ["retry"] * 5
    assert all(r.error_reason == "exit" and r.error == "boom" for r in rs[:5])
    gaps = [b.started_at - a.finished_at for a, b in itertools.pairwise(rs)]
    # Doubling from 0.01, capped at 0.04 (loop timers never fire early).
    for gap, want in zip(gaps, [0.01, 0.02, 0.04, 0.04, 0.04], strict=True):
        assert gap >= want - 1e-3, gaps
    assert done.changed and act.real == {"g": "A"}


async def test_newer_desired_supersedes_a_pending_retry() -> None:
    act, reports = FakeActuator(), Reports()
    act.apply_errors = [ActuatorError("exit", "A is broken")]
    conv = make(act, reports, backoff_initial=60, backoff_max=60)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        await reports.wait(lambda r: not r.ok)
        # The retry for A is 60 s away; B must not wait for it.
        conv.set_desired(routes({"g": "B"}))
        r = await reports.wait(lambda r: r.ok)
    assert texts(r.desired) == {"g": "B"} and r.trigger == "desired" and r.attempt == 1
    assert act.real == {"g": "B"}


async def test_new_desired_resets_backoff() -> None:
    act, reports = FakeActuator(), Reports()
    act.apply_errors = [ActuatorError("exit", "no") for _ in range(7)]
    conv = make(act, reports, backoff_initial=0.01, backoff_max=60)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        # After 6 failures A's next retry would be 0.64 s away.
        await reports.wait(lambda r: r.attempt == 6)
        conv.set_desired(routes({"g": "B"}))
        first = await reports.wait(lambda r: str(r.desired.get("g")) == "B")
        done = await reports.wait(lambda r: r.ok)
    assert not first.ok and first.attempt == 1  # the 7th error lands on B
    assert done.trigger == "retry" and done.attempt == 2
    assert done.started_at - first.finished_at < 0.3  # about 0.01, not 0.64


async def test_identical_desired_is_ignored() -> None:
    act, reports = FakeActuator(), Reports()
    conv = make(act, reports)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        await reports.count(1)
        calls = len(act.calls)
        conv.set_desired(routes({"g": "A"}))
        conv.set_desired(routes({"g": "B"}))
        await reports.count(2)
    assert [texts(r.desired) for r in reports.items] == [{"g": "A"}, {"g": "B"}]
    assert act.calls[calls] == ("verify", {"g": "B"})


async def test_drift_is_repaired() -> None:
    act, reports = FakeActuator(), Reports()
    conv = make(act, reports, drift_interval=0.01)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        await reports.count(1)
        # Quiet drift checks verify, but neither apply nor report.
        start = act.verifies
        while act.verifies < start + 3:
            act.verified.clear()
            async with asyncio.timeout(WAIT):
                await act.verified.wait()
        assert len(reports.items) == 1 and act.applies() == 1
        act.real["g"] = "B"  # someone changed the real system
        r = await reports.wait(lambda r: r.trigger == "drift")
        assert conv.converged
    assert r.ok and r.changed and r.attempt == 1
    assert act.real == {"g": "A"}


async def test_failed_drift_repair_is_retried() -> None:
    act, reports = FakeActuator(), Reports()
    conv = make(act, reports, drift_interval=0.01, backoff_initial=0.01)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        await reports.count(1)
        act.apply_errors = [ActuatorError("netlink", "down")]
        act.real.clear()  # e.g. the kernel flushed the route
        bad = await reports.wait(lambda r: r.trigger == "drift")
        good = await reports.wait(lambda r: r.trigger == "retry")
    assert not bad.ok and bad.error_reason == "netlink"
    assert good.ok and good.attempt == 2 and act.real == {"g": "A"}


async def test_unexpected_exceptions_do_not_kill_the_loop() -> None:
    act, reports = FakeActuator(), Reports()
    act.apply_errors = [RuntimeError("bug"), asyncio.CancelledError()]
    calls = 0

    def on_report(r: ApplyReport) -> None:
        nonlocal calls
        calls += 1
        reports(r)
        raise ValueError("a broken subscriber must not matter either")

    loop = asyncio.get_running_loop()
    conv = Converger(act, backoff_initial=0.01, clock=loop.time, on_report=on_report)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        done = await reports.wait(lambda r: r.ok)
    first, second = reports.items[:2]
    assert first.error_reason == "internal" and "RuntimeError: bug" in (first.error or "")
    assert second.error_reason == "internal" and "CancelledError" in (second.error or "")
    assert done.attempt == 3 and calls == 3


async def test_failing_verify_before_apply_does_not_block_apply() -> None:
    act, reports = FakeActuator(), Reports()
    real_verify = act.verify
    failures = [ActuatorError("timeout", "verify hung")]

    async def flaky_verify(desired: Mapping[str, str]) -> bool:
        if failures:
            raise failures.pop()
        return await real_verify(desired)

    act.verify = flaky_verify  # type: ignore[method-assign]
    conv = make(act, reports)
    async with running(conv):
        conv.set_desired(routes({"g": "A"}))
        (r,) = await reports.count(1)
    assert r.ok and r.changed and act.real == {"g": "A"}


async def test_cancel_during_apply() -> None:
    act, reports = FakeActuator(), Reports()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_apply(desired: Mapping[str, str]) -> None:
        entered.set()
        await release.wait()

    act.apply = slow_apply  # type: ignore[method-assign]
    conv = make(act, reports)
    task = asyncio.create_task(conv.run())
    conv.set_desired(routes({"g": "A"}))
    async with asyncio.timeout(WAIT):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reports.items == []


def test_rejects_nonsense_timings() -> None:
    with pytest.raises(ValueError):
        Converger(FakeActuator(), backoff_initial=2, backoff_max=1)
    with pytest.raises(ValueError):
        Converger(FakeActuator(), drift_interval=0)
