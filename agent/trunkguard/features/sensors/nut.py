"""UPS and backup power from a NUT server (upsd, TCP 3493), read with aionut.

A variable as a number (`battery.charge`, `battery.runtime` in seconds), or a flag of
`ups.status` as a boolean (`OB`: on battery, `LB`: low battery, `RB`: replace battery).
Sensors naming the same server and user share one connection, and each UPS is asked
once per poll (LIST VAR). A driver that is gone or stale (ERR DRIVER-NOT-CONNECTED,
DATA-STALE), a driver still starting (status WAIT) or a lost connection is a read
error with its reason, so the sensor goes stale, never "fine".
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from aionut import AIONUTClient, NUTError
from pydantic import Field, model_validator

from trunkguard.features.sensors.source import Kind, Outcome, Reader, Source
from trunkguard.schema import Duration, Name
from trunkguard.watch import sensor_parse as sp
from trunkguard.watch.sensor_parse import SensorReadError

STATUS = "ups.status"


class NutSource(Source):
    ups: Name  # as in upsd's ups.conf, e.g. "ups1"
    variable: str = Field(min_length=1, pattern=r"^[a-z0-9_.]+$")  # e.g. battery.runtime
    flag: str | None = Field(None, pattern=r"^[A-Z]{2,8}$")  # a ups.status flag, e.g. OB
    host: str = "127.0.0.1"
    port: int = Field(3493, ge=1, le=65535)
    username: str | None = None
    password_file: str | None = None  # the password, alone in a file only the agent reads
    timeout: Duration = 2.0

    default_interval: ClassVar[float] = 2.0

    @model_validator(mode="after")
    def _flag_of_status(self) -> NutSource:
        if self.flag is not None and self.variable != STATUS:
            raise ValueError(f"flag reads {STATUS} (set variable: {STATUS} or leave flag out)")
        return self

    def group(self) -> Hashable:
        return ("nut", self.host, self.port, self.username, self.password_file)

    def reader(self, env: Mapping[str, str]) -> Reader:
        password = None
        if self.password_file is not None:
            password = Path(self.password_file).read_text().strip()
        client = AIONUTClient(self.host, self.port, self.username, password, self.timeout)
        return NutReader(client, f"{self.host}:{self.port}")

    def problems(self) -> list[tuple[str, str]]:
        if self.password_file is not None and not Path(self.password_file).is_file():
            return [("password_file", f"cannot read {self.password_file}")]
        return []

    def value(self, ups_vars: Mapping[str, str], kind: Kind) -> float | bool:
        status = ups_vars.get(STATUS, "")
        if status.split()[:1] == ["WAIT"]:
            raise SensorReadError(f"{self.ups}: driver not ready ({STATUS} WAIT)")
        text = ups_vars.get(self.variable)
        if text is None:
            raise SensorReadError(f"{self.ups} has no variable {self.variable}")
        if self.flag is not None:
            return self.flag in text.split()
        return sp.parse_value(text, kind)


class NutReader:
    def __init__(self, client: AIONUTClient, server: str) -> None:
        self.client, self.server = client, server

    async def read(self, wanted: Sequence[tuple[Source, Kind]], timeout: float) -> list[Outcome]:
        got: dict[str, Mapping[str, str] | SensorReadError] = {}
        for src, _ in wanted:
            assert isinstance(src, NutSource)
            if src.ups not in got:
                got[src.ups] = await self._list(src.ups, timeout)
        return [_pick(src, kind, got) for src, kind in wanted]

    async def _list(self, ups: str, timeout: float) -> Mapping[str, str] | SensorReadError:
        try:
            async with asyncio.timeout(timeout):
                return await self.client.list_vars(ups)
        except TimeoutError:
            return SensorReadError(f"nut {self.server}: no answer within {timeout:g}s")
        except (NUTError, OSError, ValueError, RuntimeError) as e:
            return SensorReadError(f"nut {self.server}: {e or type(e).__name__}")

    async def close(self) -> None:
        self.client.shutdown()


def _pick(
    src: Source, kind: Kind, got: Mapping[str, Mapping[str, str] | SensorReadError]
) -> Outcome:
    assert isinstance(src, NutSource)
    ups_vars = got[src.ups]
    if isinstance(ups_vars, SensorReadError):
        return ups_vars
    try:
        return src.value(ups_vars, kind)
    except SensorReadError as e:
        return e
