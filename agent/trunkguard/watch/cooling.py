"""Cooling and room sensors: where each value is read, and the poller that reads them.

An input only: every poll ends in on_sample(name, value, at, "") or, when anything
goes wrong, on_sample(name, None, at, "one-line reason"); the core judges values.
Sensors that read the same program (one `sensors -j` or ipmitool run serves them
all) form one group, polled once per cycle at the smallest interval of its sensors.
sysfs files are read in a thread: a broken sensor can block a read indefinitely.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from asyncio import Future
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from structlog.typing import FilteringBoundLogger

from trunkguard.obs.logging import get_logger
from trunkguard.procs import BASE_ENV, ProgramError, run_program
from trunkguard.watch import sensor_parse as sp
from trunkguard.watch.sensor_parse import Kind, SensorReadError

SYSFS_READ_MAX = 4096
MAX_PHASE = 1.0  # first polls are spread over up to this many seconds (or 10% of interval)


@dataclass(frozen=True)
class HwmonSource:
    """A hwmon attribute: chip is the `name` file ("coretemp", "nct6775"); label picks
    the *_input whose *_label matches, input names the file ("temp1", "fan2_alarm")."""

    chip: str
    label: str | None = None
    input: str | None = None
    root: str = "/sys/class/hwmon"

    def __post_init__(self) -> None:
        if (self.label is None) == (self.input is None):
            raise ValueError("hwmon: give label or input, not both")


@dataclass(frozen=True)
class ThermalSource:
    zone_type: str  # thermal_zone*/type, e.g. "x86_pkg_temp", "acpitz"
    root: str = "/sys/class/thermal"


@dataclass(frozen=True)
class LmSensorsSource:
    chip: str  # fnmatch pattern, e.g. "coretemp-isa-*"; must match exactly one chip
    feature: str
    subfeature: str | None = None
    argv: tuple[str, ...] = ("/usr/bin/sensors", "-j")


@dataclass(frozen=True)
class IpmiSource:
    name: str  # "Inlet Temp"; "Temp@0Fh" where a BMC repeats a name
    argv: tuple[str, ...] = ("/usr/bin/ipmitool", "sdr", "type", "Temperature")


@dataclass(frozen=True)
class CommandSource:
    argv: tuple[str, ...]  # prints the value on its first non-empty line


@dataclass(frozen=True)
class MqttSource:
    """Not polled: the daemon subscribes and feeds payloads through parse_payload."""

    topic: str
    field: str | None = None


Source = HwmonSource | ThermalSource | LmSensorsSource | IpmiSource | CommandSource | MqttSource
ProgramSource = LmSensorsSource | IpmiSource | CommandSource
Sample = float | bool
OnSample = Callable[[str, Sample | None, float, str], None]


@dataclass(frozen=True)
class SensorPlan:
    name: str
    source: Source
    kind: Literal["number", "bool"] = "number"
    interval: float = 10.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        argv = getattr(self.source, "argv", None)
        if argv is not None and (not argv or not all(isinstance(a, str) for a in argv)):
            raise ValueError(f"sensor {self.name}: argv must be a non-empty list of strings")
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError(f"sensor {self.name}: interval and timeout must be positive")


@dataclass(eq=False)
class _Group:
    """Sensors served by one read: a program run, or one sysfs file."""

    plans: list[SensorPlan]
    argv: tuple[str, ...] | None
    interval: float = field(init=False)
    timeout: float = field(init=False)
    blocked: Future[Sample] | None = None  # a sysfs read that never returned

    def __post_init__(self) -> None:
        self.interval = min(p.interval for p in self.plans)
        # The longest wait any of its sensors allows: a shared program is not
        # killed sooner than one of its readers was configured to wait.
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
        self.env = {**BASE_ENV, **(env or {})}
        self._errors: dict[str, str] = {}  # sensor -> last error text ("" when reading)
        by_argv: dict[tuple[str, ...], list[SensorPlan]] = {}
        self._groups: list[_Group] = []
        for p in plans:
            if isinstance(p.source, LmSensorsSource | IpmiSource | CommandSource):
                by_argv.setdefault(tuple(p.source.argv), []).append(p)
            elif not isinstance(p.source, MqttSource):
                self._groups.append(_Group([p], None))
        self._groups += [_Group(ps, argv) for argv, ps in by_argv.items()]

    async def run(self) -> None:
        """Poll every group until cancelled. Read failures are reported, never raised."""
        async with asyncio.TaskGroup() as tg:
            for g in self._groups:
                tg.create_task(self._poll_forever(g), name=f"sensor {g.plans[0].name}")
            await asyncio.get_running_loop().create_future()  # nothing to poll: just wait

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
        if g.argv is not None:
            try:
                out = await run_program(g.argv, timeout=g.timeout, env=self.env, capture=True)
            except ProgramError as e:
                self._fail(g.plans, e.message)
                return
            text = out.decode("utf-8", "replace")
            at = self.clock()
            for p in g.plans:
                assert isinstance(p.source, LmSensorsSource | IpmiSource | CommandSource)
                try:
                    value = _from_output(p.source, p.kind, text)
                except SensorReadError as e:
                    self._report(p, None, at, str(e))
                else:
                    self._report(p, value, at, "")
            return
        (p,) = g.plans
        try:
            value = await self._read_file(g, p)
        except SensorReadError as e:
            self._report(p, None, self.clock(), str(e))
        else:
            self._report(p, value, self.clock(), "")

    async def _read_file(self, g: _Group, p: SensorPlan) -> Sample:
        # Off the loop: a sysfs read can block on broken hardware. Such a thread cannot
        # be stopped, so while it hangs no second one is started for the same sensor.
        if g.blocked is not None and not g.blocked.done():
            raise SensorReadError("the previous read is still blocked")
        read = _in_thread(_read_sysfs, p.source, p.kind)
        done, _ = await asyncio.wait({read}, timeout=g.timeout)
        if not done:
            g.blocked = read
            raise SensorReadError(f"read took longer than {g.timeout:g}s")
        g.blocked = None
        return read.result()

    def _fail(self, plans: Sequence[SensorPlan], error: str) -> None:
        at = self.clock()
        for p in plans:
            self._report(p, None, at, error)

    def _report(self, p: SensorPlan, value: Sample | None, at: float, error: str) -> None:
        before = self._errors.get(p.name)
        self._errors[p.name] = error
        if error and error != before:
            self.log.warning("sensor read failed", sensor=p.name, error=error)
        elif not error and before:
            self.log.info("sensor reads again", sensor=p.name, value=value)
        self.on_sample(p.name, value, at, error)


def _in_thread(read: Callable[[Source, Kind], Sample], src: Source, kind: Kind) -> Future[Sample]:
    """Run a blocking read in a daemon thread of its own, not asyncio's executor:
    asyncio.run() waits for executor threads at exit, and a wedged read never ends."""
    loop = asyncio.get_running_loop()
    fut: Future[Sample] = loop.create_future()

    def work() -> None:
        try:
            outcome: Sample | BaseException = read(src, kind)
        except BaseException as e:  # handed to the loop, raised by fut.result()
            outcome = e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(_settle, fut, outcome)

    threading.Thread(target=work, name="sensor-read", daemon=True).start()
    return fut


def _settle(fut: Future[Sample], outcome: Sample | BaseException) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
        fut.exception()  # an abandoned (timed-out) read's failure is nobody's to log
    else:
        fut.set_result(outcome)


def _from_output(src: ProgramSource, kind: Kind, text: str) -> Sample:
    if isinstance(src, CommandSource):
        return sp.parse_value(text, kind)
    if isinstance(src, LmSensorsSource):
        value = sp.parse_lm_sensors(text, src.chip, src.feature, src.subfeature)
    else:
        value = sp.parse_ipmitool_sdr(text, src.name)
    return sp.number_as_bool(value) if kind == "bool" else value


# ---- sysfs (runs in a worker thread) ----------------------------------------------


def _read_sysfs(src: Source, kind: Kind) -> Sample:
    if isinstance(src, HwmonSource):
        path = _hwmon_file(src)
        value = sp.hwmon_value(path.name, _read_small(path))
    elif isinstance(src, ThermalSource):
        zones = _entries(Path(src.root), "thermal_zone")
        zone = _only(
            [z for z in zones if _name(z / "type") == src.zone_type],
            f"thermal zone of type {src.zone_type!r} under {src.root}",
        )
        value = sp.millidegrees(_read_small(zone / "temp"), f"{zone.name}/temp")
    else:
        raise SensorReadError(f"{type(src).__name__} is not a sysfs source")
    return sp.number_as_bool(value) if kind == "bool" else value


def _hwmon_file(src: HwmonSource) -> Path:
    chip = _only(
        [d for d in _entries(Path(src.root), "hwmon") if _name(d / "name") == src.chip],
        f"hwmon chip named {src.chip!r} under {src.root}",
    )
    if src.input is not None:
        name = src.input if "_" in src.input else f"{src.input}_input"
        if "/" in name or name.startswith("."):
            raise SensorReadError(f"hwmon input {src.input!r} is not a file name")
        return chip / name
    labels = sorted(chip.glob("*_label"))
    hit = _only(
        [f for f in labels if _name(f) == src.label],
        f"label {src.label!r} in {src.chip} ({chip.name})",
    )
    return hit.with_name(hit.name.removesuffix("_label") + "_input")


def _entries(root: Path, prefix: str) -> list[Path]:
    try:
        return sorted(d for d in root.iterdir() if d.name.startswith(prefix))
    except OSError as e:
        raise SensorReadError(f"cannot list {root}: {e.strerror or e}") from None


def _only(hits: list[Path], what: str) -> Path:
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise SensorReadError(f"no {what}")
    raise SensorReadError(f"{len(hits)} of {what}: {', '.join(h.name for h in hits)}")


def _name(path: Path) -> str | None:
    """A name-like attribute, or None when it cannot be read (not every entry has one)."""
    try:
        return _read_small(path).strip()
    except SensorReadError:
        return None


def _read_small(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(SYSFS_READ_MAX)
    except OSError as e:
        # EIO, ENODATA, EAGAIN: what a broken or sleeping sensor answers.
        raise SensorReadError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SensorReadError(f"{path} is not text") from None
