"""What a sensor source is: where one value comes from, and who reads it.

A source is a config model (its keys under `sensors.<name>.<source>`) that says
which group it is read with: sources with equal group() keys are served by one
Reader per poll (one `sensors -j` run, one NUT connection). A source whose group()
is None is not polled: its values arrive pushed (MQTT).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import ClassVar, Literal, Protocol

from trunkguard.schema import Strict
from trunkguard.watch.sensor_parse import SensorReadError

Kind = Literal["number", "bool"]
Sample = float | bool
Outcome = Sample | SensorReadError  # one per sensor of a read


# Readings a working sensor of this unit can give; beyond them the sensor is broken
# (a room at 10^28 °C is a failed probe, not a fire), never "critical".
PLAUSIBLE = {
    "°C": (-60.0, 200.0),
    "C": (-60.0, 200.0),
    "°F": (-80.0, 400.0),
    "%": (0.0, 100.0),
    "s": (0.0, 10_000_000.0),
    "V": (0.0, 100_000.0),
    "W": (0.0, 10_000_000.0),
    "rpm": (0.0, 100_000.0),
}
ANY_UNIT = (-1e9, 1e9)


def implausible(value: Sample, bounds: tuple[float, float], unit: str) -> str | None:
    """Why a reading cannot be true, or None."""
    if isinstance(value, bool) or bounds[0] <= value <= bounds[1]:
        return None
    return f"implausible reading {value:g}{unit} (plausible: {bounds[0]:g} to {bounds[1]:g})"


class Reader(Protocol):
    async def read(self, wanted: Sequence[tuple[Source, Kind]], timeout: float) -> list[Outcome]:
        """One read for a group: an outcome per (source, kind), never an exception."""
        ...

    async def close(self) -> None: ...


class Source(Strict):
    default_interval: ClassVar[float] = 10.0  # a sensor's poll interval unless it sets one

    def group(self) -> Hashable | None:
        """Sources with the same key share one read; None: pushed, not polled."""
        return None

    def reader(self, env: Mapping[str, str]) -> Reader:
        """The reader for this source's group (made once, from its first source)."""
        raise NotImplementedError(f"{type(self).__name__} is not polled")

    def problems(self) -> list[tuple[str, str]]:
        """Checks against the host (files that must exist): (key, message) pairs."""
        return []
