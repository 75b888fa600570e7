"""Values printed by programs: `sensors -j`, `ipmitool sdr`, or any command.

Sensors naming the same argv share one run per poll (one `sensors -j` or ipmitool
run serves them all); each then finds its own value in the output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from trunkguard.features.sensors.source import Kind, Outcome, Reader, Sample, Source
from trunkguard.procs import BASE_ENV, ProgramError, run_program
from trunkguard.schema import Argv
from trunkguard.watch import sensor_parse as sp
from trunkguard.watch.sensor_parse import SensorReadError


class _Program(Source):
    argv: Argv

    def group(self) -> Hashable:
        return ("argv", *self.argv)

    def reader(self, env: Mapping[str, str]) -> Reader:
        return ProgramReader(tuple(self.argv), {**BASE_ENV, **env})

    def parse(self, text: str, kind: Kind) -> Sample:
        raise NotImplementedError


class LmSensorsSource(_Program):
    chip: str  # fnmatch pattern, e.g. "coretemp-isa-*"; must match exactly one chip
    feature: str
    subfeature: str | None = None
    argv: Argv = ["/usr/bin/sensors", "-j"]

    def parse(self, text: str, kind: Kind) -> Sample:
        value = sp.parse_lm_sensors(text, self.chip, self.feature, self.subfeature)
        return sp.number_as_bool(value) if kind == "bool" else value


class IpmiSource(_Program):
    name: str  # "Inlet Temp"; "Temp@0Fh" where a BMC repeats a name
    argv: Argv = ["/usr/bin/ipmitool", "sdr", "type", "Temperature"]

    def parse(self, text: str, kind: Kind) -> Sample:
        value = sp.parse_ipmitool_sdr(text, self.name)
        return sp.number_as_bool(value) if kind == "bool" else value


class CommandSource(_Program):
    """A program that prints the value on its first non-empty line (and exits 0)."""

    def parse(self, text: str, kind: Kind) -> Sample:
        return sp.parse_value(text, kind)


class ProgramReader:
    def __init__(self, argv: tuple[str, ...], env: Mapping[str, str]) -> None:
        self.argv, self.env = argv, env

    async def read(self, wanted: Sequence[tuple[Source, Kind]], timeout: float) -> list[Outcome]:
        try:
            out = await run_program(self.argv, timeout=timeout, env=self.env, capture=True)
        except ProgramError as e:
            return [SensorReadError(e.message)] * len(wanted)
        text = out.decode("utf-8", "replace")
        return [_parse(src, kind, text) for src, kind in wanted]

    async def close(self) -> None:
        pass


def _parse(src: Source, kind: Kind, text: str) -> Outcome:
    assert isinstance(src, _Program)
    try:
        return src.parse(text, kind)
    except SensorReadError as e:
        return e
