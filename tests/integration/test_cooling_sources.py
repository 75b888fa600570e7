"""SensorWatcher reading real sources: sysfs trees built here, real programs and scripts.

Every wait is on a sample the watcher reports (an asyncio.Queue fed by on_sample),
never a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from structlog.testing import CapturingLogger
from structlog.typing import FilteringBoundLogger

from trunkguard.features.sensors.mqtt import MqttSource
from trunkguard.features.sensors.poller import SensorPlan, SensorWatcher
from trunkguard.features.sensors.programs import CommandSource, IpmiSource, LmSensorsSource
from trunkguard.features.sensors.source import Sample
from trunkguard.features.sensors.sysfs import HwmonSource, ThermalSource

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sensors"
IPMI = FIXTURES / "ipmitool-dell-r730xd-idrac8-elist-temp.txt"
SENSORS_J = FIXTURES / "sensors-j-nct6798-nvme-coretemp.json"

Event = tuple[str, Sample | None, float, str]


class Watch:
    """A running SensorWatcher and the samples it reported, in order."""

    def __init__(self, plans: Sequence[SensorPlan], **kw: Any) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []
        self.watcher = SensorWatcher(plans, self._on_sample, **kw)
        self.task = asyncio.create_task(self.watcher.run())

    def _on_sample(self, name: str, value: Sample | None, at: float, error: str) -> None:
        self.queue.put_nowait((name, value, at, error))

    async def sample(
        self, name: str, ok: Callable[[Event], bool] = lambda e: True, timeout: float = 10
    ) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.queue.get()
                self.seen.append(event)
                if event[0] == name and ok(event):
                    return event

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def watches() -> AsyncIterator[list[Watch]]:
    running: list[Watch] = []
    yield running
    for w in running:
        if not w.task.done():
            await w.stop()


def start(watches: list[Watch], plans: Sequence[SensorPlan], **kw: Any) -> Watch:
    w = Watch(plans, **kw)
    watches.append(w)
    return w


def write(path: Path, text: str) -> None:
    """Replace a file at once, as the kernel does: a reader never sees half a value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text("set -u\n" + body)
    return ("/bin/sh", str(path))


def plan(name: str, source: Any, **kw: Any) -> SensorPlan:
    kw.setdefault("interval", 0.05)
    kw.setdefault("timeout", 2.0)
    return SensorPlan(name, source, **kw)


def ok(e: Event) -> bool:
    return e[1] is not None


def failed(e: Event) -> bool:
    return e[1] is None


# ---- sysfs ---------------------------------------------------------------------------


def hwmon_tree(root: Path) -> Path:
    write(root / "hwmon0" / "name", "acpitz\n")
    write(root / "hwmon0" / "temp1_input", "27800\n")
    write(root / "hwmon1" / "name", "coretemp\n")
    write(root / "hwmon1" / "temp1_label", "Package id 0\n")
    write(root / "hwmon1" / "temp1_input", "45000\n")
    write(root / "hwmon1" / "temp2_label", "Core 0\n")
    write(root / "hwmon1" / "temp2_input", "43000\n")
    write(root / "hwmon2" / "name", "nct6775\n")
    write(root / "hwmon2" / "fan1_input", "1278\n")
    write(root / "hwmon2" / "intrusion0_alarm", "1\n")
    return root


def thermal_tree(root: Path) -> Path:
    write(root / "thermal_zone0" / "type", "acpitz\n")
    write(root / "thermal_zone0" / "temp", "27800\n")
    write(root / "thermal_zone1" / "type", "x86_pkg_temp\n")
    write(root / "thermal_zone1" / "temp", "52000\n")
    write(root / "cooling_device0" / "type", "Processor\n")  # not a zone
    return root


async def test_hwmon_and_thermal_values_follow_the_files(
    tmp_path: Path, watches: list[Watch]
) -> None:
    hw = str(hwmon_tree(tmp_path / "hwmon"))
    th = str(thermal_tree(tmp_path / "thermal"))
    w = start(
        watches,
        [
            plan("package", HwmonSource(chip="coretemp", label="Package id 0", root=hw)),
            plan("core0", HwmonSource(chip="coretemp", input="temp2", root=hw)),
            plan("fan", HwmonSource(chip="nct6775", input="fan1", root=hw)),
            plan(
                "intrusion",
                HwmonSource(chip="nct6775", input="intrusion0_alarm", root=hw),
                kind="bool",
            ),
            plan("pkg_zone", ThermalSource(type="x86_pkg_temp", root=th)),
        ],
    )
    assert (await w.sample("package"))[1:4:2] == (45.0, "")
    assert (await w.sample("core0"))[1] == 43.0
    assert (await w.sample("fan"))[1] == 1278.0
    assert (await w.sample("intrusion"))[1] is True
    assert (await w.sample("pkg_zone"))[1] == 52.0

    write(tmp_path / "hwmon" / "hwmon1" / "temp1_input", "61500\n")
    write(tmp_path / "thermal" / "thermal_zone1" / "temp", "71000\n")
    await w.sample("package", lambda e: e[1] == 61.5)
    await w.sample("pkg_zone", lambda e: e[1] == 71.0)
    assert all(e[3] == "" for e in w.seen)


async def test_sysfs_failures_are_reported(tmp_path: Path, watches: list[Watch]) -> None:
    hw = hwmon_tree(tmp_path / "hwmon")
    write(hw / "hwmon3" / "name", "coretemp\n")  # a second socket: ambiguous
    write(hw / "hwmon2" / "temp1_input", "N/A\n")
    th = str(thermal_tree(tmp_path / "thermal"))
    w = start(
        watches,
        [
            plan("no_chip", HwmonSource(chip="k10temp", input="temp1", root=str(hw))),
            plan("two_chips", HwmonSource(chip="coretemp", input="temp1", root=str(hw))),
            plan("no_label", HwmonSource(chip="acpitz", label="Tctl", root=str(hw))),
            plan("no_file", HwmonSource(chip="acpitz", input="temp9", root=str(hw))),
            plan("garbage", HwmonSource(chip="nct6775", input="temp1", root=str(hw))),
            plan("no_root", HwmonSource(chip="coretemp", input="temp1", root=str(tmp_path / "x"))),
            plan("no_zone", ThermalSource(type="acpitz-2", root=th)),
        ],
    )
    expect = {
        "no_chip": "no hwmon chip named 'k10temp' under",
        "two_chips": "2 of hwmon chip named 'coretemp' under",
        "no_label": "no label 'Tctl' in acpitz (hwmon0)",
        "no_file": "hwmon0/temp9_input: No such file or directory",
        "garbage": "temp1_input: 'N/A' is not an integer",
        "no_root": "cannot list",
        "no_zone": "no thermal zone of type 'acpitz-2'",
    }
    for name, words in expect.items():
        _, value, _, error = await w.sample(name)
        assert value is None and words in error and "\n" not in error, (name, error)


async def test_a_blocked_sysfs_read_is_timed_out_and_not_piled_up(
    tmp_path: Path, watches: list[Watch]
) -> None:
    hw = hwmon_tree(tmp_path / "hwmon")
    fifo = hw / "hwmon0" / "temp2_input"
    os.mkfifo(fifo)  # open() for reading blocks until a writer comes: a wedged sensor
    w = start(
        watches,
        [plan("wedged", HwmonSource(chip="acpitz", input="temp2", root=str(hw)), timeout=0.2)],
    )
    try:
        assert "read took longer than 0.2s" in (await w.sample("wedged"))[3]
        assert (await w.sample("wedged"))[3] == "the previous read is still blocked"
    finally:
        await w.stop()  # then release the one thread the watcher started
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


# ---- programs --------------------------------------------------------------------------


async def test_command_values_in_a_minimal_environment(
    tmp_path: Path, watches: list[Watch], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUNKGUARD_MQTT_PASSWORD", "hunter2")
    value = tmp_path / "value"
    write(value, "21.5\n")
    number = script(tmp_path, "room.sh", f'echo "# room sensor" >&2\ncat "{value}"\n')
    env_ok = script(
        tmp_path,
        "env.sh",
        '[ -z "${TRUNKGUARD_MQTT_PASSWORD:-}" ] && [ "$TRUNKGUARD_SITE" = bj1 ] '
        '&& [ "$(readlink /proc/$$/fd/0)" = /dev/null ] && echo running || echo stopped\n',
    )
    w = start(
        watches,
        [
            plan("room", CommandSource(argv=number)),
            plan("env", CommandSource(argv=env_ok), kind="bool"),
        ],
        env={"TRUNKGUARD_SITE": "bj1"},
    )
    assert (await w.sample("room"))[1] == 21.5
    assert (await w.sample("env"))[1] is True
    write(value, "hot\n")
    _, _, _, error = await w.sample("room", failed)
    assert error == "output 'hot' is not a number"
    write(value, "23\n")
    await w.sample("room", lambda e: e[1] == 23.0)


async def test_an_implausible_reading_is_a_read_error(tmp_path: Path, watches: list[Watch]) -> None:
    value = tmp_path / "value"
    write(value, "1e28\n")
    room = script(tmp_path, "room.sh", f'cat "{value}"\n')
    w = start(watches, [plan("room", CommandSource(argv=room), plausible=(-60, 200), unit="C")])
    _, v, _, error = await w.sample("room", failed)
    assert v is None and error == "implausible reading 1e+28C (plausible: -60 to 200)"
    write(value, "24\n")
    await w.sample("room", lambda e: e[1] == 24.0)


async def test_one_program_run_serves_every_sensor_reading_it(
    tmp_path: Path, watches: list[Watch]
) -> None:
    runs = tmp_path / "runs"
    ipmitool = script(tmp_path, "ipmitool.sh", f'echo run >> "{runs}"\ncat "{IPMI}"\n')
    sensors = ("/bin/cat", str(SENSORS_J))
    w = start(
        watches,
        [
            plan("inlet", IpmiSource(name="Inlet Temp", argv=ipmitool), interval=3600),
            plan("exhaust", IpmiSource(name="Exhaust Temp", argv=ipmitool), interval=3600),
            plan("cpu1", IpmiSource(name="Temp@0Eh", argv=ipmitool), interval=3600),
            plan("cpu2", IpmiSource(name="Temp@0Fh", argv=ipmitool), interval=3600),
            plan(
                "package",
                LmSensorsSource(chip="coretemp-isa-*", feature="Package id 0", argv=sensors),
            ),
            plan("systin", LmSensorsSource(chip="nct67*", feature="SYSTIN", argv=sensors)),
        ],
    )
    assert (await w.sample("inlet"))[1] == 24.0
    assert (await w.sample("exhaust"))[1] == 33.0
    assert (await w.sample("cpu1"))[1] == 43.0
    assert (await w.sample("cpu2"))[3] == "IPMI sensor 'Temp@0Fh': no reading (Disabled)"
    assert (await w.sample("package"))[1] == 37.0
    assert (await w.sample("systin"))[1] == 120.0
    assert runs.read_text().split() == ["run"]  # four sensors, one ipmitool run
    # One poll serves them all: the same `at` for every sensor of the run.
    ats = {e[2] for e in w.seen if e[0] in ("inlet", "exhaust", "cpu1", "cpu2")}
    assert len(ats) == 1


async def test_a_group_polls_at_its_smallest_interval(tmp_path: Path, watches: list[Watch]) -> None:
    runs = tmp_path / "runs"
    ipmitool = script(tmp_path, "ipmitool.sh", f'echo run >> "{runs}"\ncat "{IPMI}"\n')
    w = start(
        watches,
        [
            plan("slow", IpmiSource(name="Inlet Temp", argv=ipmitool), interval=3600),
            plan("fast", IpmiSource(name="Exhaust Temp", argv=ipmitool), interval=0.05),
        ],
    )
    for _ in range(3):
        await w.sample("slow")
    slow = [e for e in w.seen if e[0] == "slow"]
    assert len(runs.read_text().split()) >= len(slow) == 3


async def test_hanging_program_is_killed_with_its_group(
    tmp_path: Path, watches: list[Watch]
) -> None:
    argv = script(
        tmp_path,
        "hang.sh",
        f'sleep 300 &\necho $! > "{tmp_path}/grandchild"\necho $$ > "{tmp_path}/child"\nwait\n',
    )
    w = start(watches, [plan("hang", CommandSource(argv=argv), interval=3600, timeout=1.0)])
    _, value, _, error = await w.sample("hang")
    assert value is None and error == "/bin/sh: killed after 1s"
    pids = [int((tmp_path / n).read_text()) for n in ("child", "grandchild")]
    try:
        await gone(*pids)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_program_failures_are_reported(tmp_path: Path, watches: list[Watch]) -> None:
    failing = script(tmp_path, "fail.sh", 'echo "ipmi: no BMC found" >&2\nexit 3\n')
    w = start(
        watches,
        [
            plan("missing", IpmiSource(name="Inlet Temp", argv=[str(tmp_path / "ipmitool")])),
            plan("exit", CommandSource(argv=failing)),
            plan("flood", CommandSource(argv=["/usr/bin/yes", "1"])),
            plan(
                "empty", LmSensorsSource(chip="coretemp-*", feature="Core 0", argv=("/bin/true",))
            ),
        ],
    )
    expect = {
        "missing": f"{tmp_path}/ipmitool: cannot start: No such file or directory",
        "exit": "/bin/sh: exited with 3: ipmi: no BMC found",
        "flood": "/usr/bin/yes: output exceeds 65536 bytes",
        "empty": "sensors output is empty",
    }
    for name, error in expect.items():
        event = await w.sample(name)
        assert event[1] is None and event[3] == error, event


async def test_warns_once_per_error_and_tells_when_it_reads_again(
    tmp_path: Path, watches: list[Watch]
) -> None:
    state = tmp_path / "state"
    write(state, "sensor unplugged\n")  # replaced whole: the script never sees half of it
    argv = script(
        tmp_path,
        "probe.sh",
        f's=$(cat "{state}")\nif [ "$s" != ok ]; then echo "$s" >&2; exit 1; fi\necho 20\n',
    )
    logger = CapturingLogger()
    log = structlog.wrap_logger(
        logger, processors=[], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    w = start(
        watches,
        [plan("probe", CommandSource(argv=argv)), plan("bus", MqttSource(topic="bms/room1/temp"))],
        log=cast(FilteringBoundLogger, log),
    )
    for _ in range(3):
        await w.sample("probe", failed)
    write(state, "sensor on fire\n")
    await w.sample("probe", lambda e: e[3].endswith("sensor on fire"))
    await w.sample("probe", failed)
    write(state, "ok\n")
    await w.sample("probe", ok)
    await w.sample("probe", ok)

    failed_with = "/bin/sh: exited with 1: "
    assert [(c.method_name, c.kwargs) for c in logger.calls] == [
        (
            "warning",
            {
                "event": "sensor read failed",
                "sensor": "probe",
                "error": failed_with + "sensor unplugged",
            },
        ),
        (
            "warning",
            {
                "event": "sensor read failed",
                "sensor": "probe",
                "error": failed_with + "sensor on fire",
            },
        ),
        ("info", {"event": "sensor reads again", "sensor": "probe", "value": 20.0}),
    ]
    assert all(e[0] == "probe" for e in w.seen)  # MQTT sensors are the daemon's to feed


# ---- helpers -------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(*pids: int) -> None:
    """Wait for processes that are not our children to die (pidfd: no polling)."""
    loop = asyncio.get_running_loop()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            async with asyncio.timeout(5):
                await ready
        finally:
            loop.remove_reader(fd)
            os.close(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
