"""The sensor poller: every polled source read on its interval, each value reported.

An input only: every poll ends in on_sample(name, value, at, "") or, when anything
goes wrong, on_sample(name, None, at, "one-line reason"); the core judges values.
Sensors whose sources share a group (one program run, one NUT connection) are read
together, once per cycle at the smallest interval of their sensors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from trunkguard.features.sensors.source import (
    ANY_UNIT,
    Kind,
    Reader,
    Sample,
    Source,
    implausible,
)
from trunkguard.obs.logging import get_logger
from trunkguard.watch.sensor_parse import SensorReadError

MAX_PHASE = 1.0  # first polls are spread over up to this many seconds (or 10% of interval)
OnSample = Callable[[str, Sample | None, float, str], None]


@dataclass(frozen=True)
class SensorPlan:
    name: str
    source: Source
    kind: Kind = "number"
    interval: float = 10.0
    timeout: float = 5.0
    plausible: tuple[float, float] = ANY_UNIT
    unit: str = ""

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError(f"sensor {self.name}: interval and timeout must be positive")


@dataclass(eq=False)
class _Group:
    """Sensors served by one read."""

    plans: list[SensorPlan]
    reader: Reader
    interval: float = field(init=False)
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.interval = min(p.interval for p in self.plans)
        # The longest wait any of its sensors allows: a shared read is not cut
        # shorter than one of its readers was configured to wait.
        self.timeout = max(p.timeout for p in self.plans)


class SensorWatcher:
    def __init__(
        self,
        plans: Sequence[SensorPlan],
        on_sample: OnSample,
        *,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.on_sample = on_sample
        self.log = log if log is not None else get_logger(__name__)
        self.clock = clock
        self._errors: dict[str, str] = {}  # sensor -> last error text ("" when reading)
        by_key: dict[Hashable, list[SensorPlan]] = {}
        for p in plans:
            key = p.source.group()
            if key is not None:  # pushed sources are not polled
                by_key.setdefault(key, []).append(p)
        self._groups = [_Group(ps, ps[0].source.reader(env or {})) for ps in by_key.values()]

    async def run(self) -> None:
        """Poll every group until cancelled. Read failures are reported, never raised."""
        try:
            async with asyncio.TaskGroup() as tg:
                for g in self._groups:
                    tg.create_task(self._poll_forever(g), name=f"sensor {g.plans[0].name}")
                await asyncio.get_running_loop().create_future()  # nothing to poll: wait
        finally:
            for g in self._groups:
                await g.reader.close()

    async def _poll_forever(self, g: _Group) -> None:
        loop = asyncio.get_running_loop()
        phase = random.uniform(0, min(MAX_PHASE, g.interval / 10))  # noqa: S311
        due = loop.time() + phase
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            start = loop.time()
            await self._poll(g)
            # From the previous start, so the schedule does not drift; a poll that
            # overran its interval is followed at once, never by a burst.
            due = max(start + g.interval, loop.time())

    async def _poll(self, g: _Group) -> None:
        """One read for the group, reported for each of its sensors."""
        wanted = [(p.source, p.kind) for p in g.plans]
        try:
            outcomes = await g.reader.read(wanted, g.timeout)
        except Exception as e:  # a reader's bug is that sensor's read error, not a crash
            outcomes = [SensorReadError(f"reader failed: {e!r}")] * len(g.plans)
        at = self.clock()
        for p, outcome in zip(g.plans, outcomes, strict=True):
            if isinstance(outcome, SensorReadError):
                self._report(p, None, at, str(outcome))
            elif (why := implausible(outcome, p.plausible, p.unit)) is not None:
                self._report(p, None, at, why)
            else:
                self._report(p, outcome, at, "")

    def _report(self, p: SensorPlan, value: Sample | None, at: float, error: str) -> None:
        before = self._errors.get(p.name)
        self._errors[p.name] = error
        if error and error != before:
            self.log.warning("sensor read failed", sensor=p.name, error=error)
        elif not error and before:
            self.log.info("sensor reads again", sensor=p.name, value=value)
        self.on_sample(p.name, value, at, error)
