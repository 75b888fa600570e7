"""Drive one actuator to the desired state: verify, apply, retry, watch for drift.

The loop is level-triggered: it only ever compares the real system (read back by
the actuator) with the latest desired state, so a retry, a drift repair and a
restart all take the same path, and re-applying an unchanged state is a no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from trunkguard.act.base import Actuator, ActuatorError, Desired
from trunkguard.obs.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ApplyReport:
    """One convergence attempt. `changed` is True when apply() was called."""

    actuator: str
    desired: Desired
    ok: bool
    changed: bool
    trigger: str  # "desired" | "drift" | "retry"
    started_at: float
    finished_at: float
    attempt: int
    error_reason: str | None = None
    error: str | None = None
    failed_groups: frozenset[str] = frozenset()  # on failure: which groups; empty = all


class Converger:
    def __init__(
        self,
        actuator: Actuator,
        *,
        drift_interval: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_report: Callable[[ApplyReport], None] | None = None,
    ) -> None:
        if drift_interval <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need drift_interval > 0 and 0 < backoff_initial <= backoff_max")
        self._actuator = actuator
        self._drift_interval = drift_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._on_report = on_report
        self._desired: Desired | None = None
        self._wake = asyncio.Event()
        self._converged = False

    @property
    def actuator(self) -> Actuator:
        return self._actuator

    @property
    def desired(self) -> Desired | None:
        """The latest desired state (read-only), None before the first decision."""
        return self._desired

    @property
    def converged(self) -> bool:
        """True when the latest desired state was verified in place."""
        return self._converged

    def set_desired(self, desired: Desired) -> None:
        """Hand over a new desired state. Call from the event loop; never blocks.

        An identical state is ignored (the core may repeat itself every tick); a
        different one supersedes whatever is running or pending and resets backoff.
        """
        new = MappingProxyType(dict(desired))
        if new == self._desired:
            return
        self._desired = new
        self._converged = False
        self._wake.set()

    def recheck(self) -> None:
        """Read the real system back now instead of at the next drift check: e.g. a
        link came back and the kernel had deleted the routes through it."""
        if self._desired is not None:
            self._converged = False
            self._wake.set()

    async def run(self) -> None:
        # Start-up touches nothing until the core has decided something.
        while self._desired is None:
            await self._wake.wait()
        trigger, attempt, delay = "desired", 0, self._backoff_initial
        while True:
            if self._wake.is_set():
                self._wake.clear()
                trigger, attempt, delay = "desired", 0, self._backoff_initial
            desired = self._desired
            attempt += 1
            ok = await self._cycle(desired, trigger, attempt)
            if self._wake.is_set():
                continue  # superseded while we were working
            self._converged = ok
            if ok:
                if not await self._sleep(self._drift_interval):
                    trigger, attempt, delay = "drift", 0, self._backoff_initial
            elif not await self._sleep(delay):
                trigger, delay = "retry", min(delay * 2, self._backoff_max)

    async def _sleep(self, seconds: float) -> bool:
        """Wait for a new desired state or the timeout; True when woken."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _cycle(self, desired: Desired, trigger: str, attempt: int) -> bool:
        act = self._actuator
        started = self._clock()
        changed = False
        try:
            pre_check = trigger == "drift" or not getattr(act, "reads_before_write", False)
            if pre_check and await self._in_place(desired):
                if trigger != "drift":  # a quiet drift check is not news
                    self._report(desired, True, False, trigger, started, attempt)
                return True
            changed = True
            if await act.apply(desired) is False:
                # apply() read everything back itself and found it in place.
                self._report(desired, True, False, trigger, started, attempt)
                return True
            if not await act.verify(desired):
                raise ActuatorError("verify", f"{act.name}: read-back differs after apply")
        except ActuatorError as e:
            self._report(
                desired, False, changed, trigger, started, attempt, e.reason, e.message, e.groups
            )
            return False
        except Exception as e:
            log.exception("actuator failed unexpectedly", actuator=act.name)
            msg = f"{type(e).__name__}: {e}"
            self._report(desired, False, changed, trigger, started, attempt, "internal", msg)
            return False
        except asyncio.CancelledError as e:
            if _really_cancelled():
                raise
            # A stray CancelledError from inside a library must not end the loop.
            msg = f"CancelledError: {e}"
            self._report(desired, False, changed, trigger, started, attempt, "internal", msg)
            return False
        self._report(desired, True, True, trigger, started, attempt)
        return True

    async def _in_place(self, desired: Desired) -> bool:
        try:
            return await self._actuator.verify(desired)
        except Exception as e:
            # Not knowing is not a reason to hold back a failover: go and apply.
            log.warning("verify before apply failed", actuator=self._actuator.name, error=str(e))
            return False

    def _report(
        self,
        desired: Desired,
        ok: bool,
        changed: bool,
        trigger: str,
        started: float,
        attempt: int,
        reason: str | None = None,
        error: str | None = None,
        failed_groups: frozenset[str] = frozenset(),
    ) -> None:
        report = ApplyReport(
            actuator=self._actuator.name,
            desired=desired,
            ok=ok,
            changed=changed,
            trigger=trigger,
            started_at=started,
            finished_at=self._clock(),
            attempt=attempt,
            error_reason=reason,
            error=error,
            failed_groups=failed_groups,
        )
        if self._on_report is None:  # nobody else tells: say it here
            if ok:
                log.info(
                    "actuator converged", actuator=report.actuator, changed=changed, trigger=trigger
                )
            else:
                log.warning(
                    "actuator failed",
                    actuator=report.actuator,
                    attempt=attempt,
                    reason=reason,
                    error=error,
                )
            return
        try:
            self._on_report(report)
        except Exception:
            log.exception("on_report callback failed", actuator=report.actuator)


def _really_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
