"""hwmon and thermal-zone values from sysfs, each read in a thread of its own.

A broken sensor can block a read indefinitely, and such a thread cannot be stopped:
while one hangs, no second read is started for the same sensor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from asyncio import Future
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

from pydantic import Field, model_validator

from trunkguard.features.sensors.source import Kind, Outcome, Reader, Sample, Source
from trunkguard.watch import sensor_parse as sp
from trunkguard.watch.sensor_parse import SensorReadError

SYSFS_READ_MAX = 4096


class HwmonSource(Source):
    """A hwmon attribute: chip is the `name` file ("coretemp", "nct6775"); label picks
    the *_input whose *_label matches, input names the file ("temp1", "fan2_alarm")."""

    chip: str
    label: str | None = None
    input: str | None = None
    root: str = "/sys/class/hwmon"

    @model_validator(mode="after")
    def _one(self) -> HwmonSource:
        if (self.label is None) == (self.input is None):
            raise ValueError("set label (e.g. 'Package id 0') or input (e.g. 'temp1'), not both")
        return self

    def group(self) -> Hashable:
        return ("sysfs", id(self))

    def reader(self, env: Mapping[str, str]) -> Reader:
        return SysfsReader()

    def value(self) -> float:
        path = _hwmon_file(self)
        return sp.hwmon_value(path.name, _read_small(path))


class ThermalSource(Source):
    type: str = Field(min_length=1)  # thermal_zone*/type, e.g. "x86_pkg_temp", "acpitz"
    root: str = "/sys/class/thermal"

    def group(self) -> Hashable:
        return ("sysfs", id(self))

    def reader(self, env: Mapping[str, str]) -> Reader:
        return SysfsReader()

    def value(self) -> float:
        zones = _entries(Path(self.root), "thermal_zone")
        zone = _only(
            [z for z in zones if _name(z / "type") == self.type],
            f"thermal zone of type {self.type!r} under {self.root}",
        )
        return sp.millidegrees(_read_small(zone / "temp"), f"{zone.name}/temp")


class SysfsReader:
    def __init__(self) -> None:
        self._blocked: Future[Sample] | None = None  # a read that never returned

    async def read(self, wanted: Sequence[tuple[Source, Kind]], timeout: float) -> list[Outcome]:
        ((src, kind),) = wanted
        assert isinstance(src, HwmonSource | ThermalSource)
        if self._blocked is not None and not self._blocked.done():
            return [SensorReadError("the previous read is still blocked")]
        read = _in_thread(lambda: _as_kind(src.value(), kind))
        done, _ = await asyncio.wait({read}, timeout=timeout)
        if not done:
            self._blocked = read
            return [SensorReadError(f"read took longer than {timeout:g}s")]
        self._blocked = None
        try:
            return [read.result()]
        except SensorReadError as e:
            return [e]

    async def close(self) -> None:
        pass


def _as_kind(value: float, kind: Kind) -> Sample:
    return sp.number_as_bool(value) if kind == "bool" else value


def _in_thread(read: Callable[[], Sample]) -> Future[Sample]:
    """Run a blocking read in a daemon thread of its own, not asyncio's executor:
    asyncio.run() waits for executor threads at exit, and a wedged read never ends."""
    loop = asyncio.get_running_loop()
    fut: Future[Sample] = loop.create_future()

    def work() -> None:
        try:
            outcome: Sample | BaseException = read()
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
