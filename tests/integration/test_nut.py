"""UPS power from a real NUT server (Debian's upsd with the dummy-ups driver).

The source reads numbers and ups.status flags over one connection per server, and a
lost driver is a read error with upsd's reason. Through the whole agent: mains lost,
the battery runtime falling, the site evacuating before the runtime reaches its
critical level, and the sensors going stale when the driver dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent, Event
from tests.lib.nut import NutServer
from trunkguard.features.sensors.nut import NutSource
from trunkguard.features.sensors.poller import SensorPlan, SensorWatcher
from trunkguard.features.sensors.source import Sample

pytestmark = pytest.mark.integration

Seen = tuple[str, Sample | None, str]


@pytest.fixture
def nut(tmp_path: Path) -> Iterator[NutServer]:
    server = NutServer.start(tmp_path / "nut", maxage=15)
    try:
        yield server
    finally:
        server.stop()


def source(nut: NutServer, **kw: object) -> NutSource:
    return NutSource.model_validate(
        {
            "ups": nut.ups,
            "host": nut.host,
            "port": nut.port,
            "username": nut.user,
            "password_file": str(nut.password_file),
            **kw,
        }
    )


async def test_numbers_flags_and_a_lost_driver_over_one_connection(nut: NutServer) -> None:
    seen: asyncio.Queue[Seen] = asyncio.Queue()
    plans = [
        SensorPlan("runtime", source(nut, variable="battery.runtime"), interval=0.2),
        SensorPlan("charge", source(nut, variable="battery.charge"), interval=0.2),
        SensorPlan("on-battery", source(nut, variable="ups.status", flag="OB"), "bool", 0.2),
        SensorPlan("no-such-var", source(nut, variable="battery.voltage"), interval=0.2),
        SensorPlan("no-such-ups", source(nut, ups="ups9", variable="ups.status"), interval=0.2),
    ]
    watcher = SensorWatcher(plans, lambda n, v, _at, err: seen.put_nowait((n, v, err)))
    task = asyncio.create_task(watcher.run())

    async def until(want: Callable[[dict[str, Seen]], bool], what: str) -> dict[str, Seen]:
        last: dict[str, Seen] = {}
        async with asyncio.timeout(10):
            while not want(last):
                s = await seen.get()
                last[s[0]] = s
        return last

    def values(**want: Sample) -> Callable[[dict[str, Seen]], bool]:
        return lambda last: all(last.get(k, ("", None, ""))[1] == v for k, v in want.items())

    try:
        last = await until(
            lambda last: values(runtime=1800.0, charge=100.0)(last) and len(last) == 5, "values"
        )
        assert last["on-battery"][1:] == (False, "")
        assert "ups1 has no variable battery.voltage" in last["no-such-var"][2]
        assert "UNKNOWN-UPS" in last["no-such-ups"][2]
        # Every sensor of this server is read over one connection.
        assert procs.established(nut.port) == 1

        await asyncio.to_thread(nut.set_vars, ups_status="OB DISCHRG", battery_runtime="900")
        await until(values(**{"on-battery": True, "runtime": 900.0}), "on battery")

        await asyncio.to_thread(nut.kill_driver)
        last = await until(
            lambda last: all(
                last.get(k, ("", 0, ""))[1] is None for k in ("runtime", "on-battery")
            ),
            "driver gone",
        )
        assert "DRIVER-NOT-CONNECTED" in last["runtime"][2]
        assert "DRIVER-NOT-CONNECTED" in last["on-battery"][2]

        await asyncio.to_thread(nut.start_driver)
        await until(values(runtime=900.0, **{"on-battery": True}), "driver back")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def config(tmp: Path, nut: NutServer, port_local: int, port_dr: int) -> Path:
    cfg = tmp / "trunkguard.yaml"
    server = (
        f"host: {nut.host}, port: {nut.port}, ups: {nut.ups}, "
        f"username: {nut.user}, password_file: {nut.password_file}"
    )
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 2}}
trunks:
  local: {{uri: "sip:127.0.0.1:{port_local}"}}
  dr-sbc: {{uri: "sip:127.0.0.1:{port_dr}"}}
sensors:
  on-battery:
    kind: bool
    nut: {{{server}, variable: ups.status, flag: OB}}
    critical_when: true
    interval: 500ms
    stale_after: 3s
  runtime:
    nut: {{{server}, variable: battery.runtime}}
    unit: s
    direction: below
    warn: 600
    critical: 300
    hysteresis: 0
    window: 6s
    interval: 500ms
    stale_after: 3s
evacuation:
  hold: 2s
  when:
    all_of:
      - {{sensors: [on-battery], is: critical}}
      - {{sensors: [runtime], critical_within: 5s}}
routes:
  pstn:
    hold: 1m
    paths:
      - {{name: local, requires: [trunk:local]}}
      - {{name: dr-site, requires: [trunk:dr-sbc], remote: true}}
""")
    return cfg


def event(name: str, **fields: object) -> Callable[[Event], bool]:
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


def test_on_battery_with_runtime_running_out_evacuates_before_critical(
    tmp_path: Path, nut: NutServer
) -> None:
    port_local, port_dr = procs.free_port(), procs.free_port()
    nut.set_vars(battery_runtime="1200")  # on mains: 20 minutes of battery, not falling
    with (
        sipp.options_responder(tmp_path, "127.0.0.1", port_local),
        sipp.options_responder(tmp_path, "127.0.0.1", port_dr),
    ):
        agent = Agent(config(tmp_path, nut, port_local, port_dr))
        try:
            agent.wait_for(agent.applied("local"), 15, "initial route")
            mark = agent.mark()
            # Mains lost: on battery, but with 20 minutes left nothing moves yet.
            nut.set_vars(ups_status="OB DISCHRG", battery_runtime="1200")
            agent.wait_for(event("sensor", sensor="on-battery", new="critical"), 5, "OB", mark)
            # Runtime falls 60 s per second (an hour's discharge at 60x) towards 300 s.
            runtime, evacuated = 1200, None
            while runtime > 300 and evacuated is None:
                runtime -= 60
                nut.set_vars(battery_runtime=str(runtime))  # waits until upsd serves it
                agent.drain()
                evacuated = next(
                    (e for e in agent.events[mark:] if event("site", new="evacuating")(e)), None
                )
            assert evacuated is not None, "no evacuation before the runtime reached critical"
            print(f"\nevacuated with {runtime} s of runtime left: {evacuated['reason']}")
            # Projected, not waited for: out at about 5 s (5 min at 60x) before critical.
            assert 300 < runtime <= 900 and "runtime" in evacuated["reason"]
            assert "on-battery true" in evacuated["reason"]
            agent.wait_for(agent.applied("dr-site"), 5, "dr-site", mark)

            # The driver dies: the power sensors go stale with upsd's reason, never "fine".
            mark = agent.mark()
            nut.kill_driver()
            start = time.monotonic()
            stale = agent.wait_for(event("sensor", sensor="runtime", new="stale"), 8, "stale", mark)
            assert "DRIVER-NOT-CONNECTED" in stale["reason"]
            assert 2.0 <= time.monotonic() - start <= 6.0
        finally:
            agent.stop()
        assert nut.password not in "".join(agent.raw)
