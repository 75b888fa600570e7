"""TemplateActuator writing real files and running real reload programs (sh scripts).

Each reload script appends one line to `runs` per run: the output's content as it
saw it (or "-" when there was no output), so a test can tell how often the reload
ran and what the PBX would have loaded each time.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.lib.core import routes, texts
from tests.lib.reports import Reports
from trunkguard.act.base import ActuatorError
from trunkguard.act.converge import Converger
from trunkguard.act.template import TemplateActuator, TemplateSpec
from trunkguard.core.ids import Paths
from trunkguard.obs.logging import configure_logging

pytestmark = pytest.mark.integration

TEMPLATE = "trunk={{ routes.outbound.vars.trunk_name }} pass={{ routes.outbound.vars.password }}\n"
VARS = {
    "carrier-a": {"trunk_name": "carrier-a", "password": "hunter2"},
    "carrier-b": {"trunk_name": "carrier-b", "password": "swordfish"},
}
A = routes({"outbound": "carrier-a"})
B = routes({"outbound": "carrier-b"})
A_TEXT = "trunk=carrier-a pass=hunter2\n"
B_TEXT = "trunk=carrier-b pass=swordfish\n"


def context(desired: Mapping[str, Paths]) -> Mapping[str, Any]:
    paths = texts(desired)
    return {
        "routes": {g: {"path": p, "vars": VARS[p], "remote": False} for g, p in paths.items()},
        "site": "bj1",
        "node": "sbc2",
    }


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.template = tmp_path / "trunks.conf.j2"
        self.template.write_text(TEMPLATE)
        self.etc = tmp_path / "etc"
        self.etc.mkdir()
        self.output = self.etc / "trunks.conf"
        self.prev = self.etc / "trunks.conf.prev"
        self.runs_file = tmp_path / "runs"

    def reload(self, body: str = "") -> tuple[str, ...]:
        """A reload program: records what it saw, then runs `body` (which may fail)."""
        path = self.dir / "reload.sh"
        path.write_text(
            "#!/bin/sh\nset -u\n"
            f'if [ -e "$TRUNKGUARD_OUTPUT" ]; then tr -d "\\n" < "$TRUNKGUARD_OUTPUT"; '
            f'else printf -; fi >> "{self.runs_file}"\n'
            f'echo >> "{self.runs_file}"\n' + body
        )
        path.chmod(0o755)
        return (str(path),)

    def actuator(self, reload: tuple[str, ...] | None = None, **kw: Any) -> TemplateActuator:
        spec = TemplateSpec(str(self.template), str(self.output), reload=reload, **kw)
        return TemplateActuator("pbx", spec, context, env={"TRUNKGUARD_SITE": "bj1"})

    def runs(self) -> list[str]:
        if not self.runs_file.exists():
            return []
        return self.runs_file.read_text().splitlines()

    def leftovers(self) -> list[str]:
        """Temporary files left in the output directory."""
        return sorted(p.name for p in self.etc.iterdir() if p.name.startswith("."))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def line(text: str) -> str:
    return text.rstrip("\n")


async def test_apply_writes_and_reloads_once(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    assert not await act.verify(A)
    assert await act.apply(A) is True
    assert lab.output.read_text() == A_TEXT
    assert lab.runs() == [line(A_TEXT)]  # the reload saw the new file
    assert await act.verify(A)
    assert not lab.prev.exists()  # nothing was there before
    assert lab.leftovers() == []

    inode = lab.output.stat().st_ino
    assert await act.apply(A) is False
    assert lab.output.stat().st_ino == inode  # not rewritten
    assert lab.runs() == [line(A_TEXT)]  # not reloaded


async def test_change_keeps_the_previous_file(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    await act.apply(A)
    assert await act.apply(B) is True
    assert lab.output.read_text() == B_TEXT
    assert lab.prev.read_text() == A_TEXT
    assert lab.runs() == [line(A_TEXT), line(B_TEXT)]
    assert await act.verify(B) and not await act.verify(A)
    assert lab.leftovers() == []


async def test_reload_environment_is_minimal(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRUNKGUARD_MQTT_PASSWORD", "hunter3")
    seen = tmp_path / "environ"
    act = lab.actuator(lab.reload(f'cat /proc/$$/environ > "{seen}"\n'))
    await act.apply(A)
    pairs = seen.read_bytes().decode().split("\0")
    assert dict(p.split("=", 1) for p in pairs if p) == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TRUNKGUARD_SITE": "bj1",
        "TRUNKGUARD_OUTPUT": str(lab.output),
    }


async def test_hand_edit_is_repaired(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    await act.apply(A)
    lab.output.write_text("trunk=somewhere-else\n")
    assert not await act.verify(A)
    assert await act.apply(A) is True
    assert lab.output.read_text() == A_TEXT
    assert lab.runs() == [line(A_TEXT), line(A_TEXT)]
    assert lab.prev.read_text() == "trunk=somewhere-else\n"


async def test_deleted_output_is_rewritten(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    await act.apply(A)
    await act.apply(B)
    lab.output.unlink()
    assert not await act.verify(B)
    assert await act.apply(B) is True
    assert lab.output.read_text() == B_TEXT
    # .prev is what the last write replaced: nothing, not an older version.
    assert not lab.prev.exists()


async def test_failed_reload_restores_the_previous_file(lab: Lab) -> None:
    reload = lab.reload(
        'if grep -q carrier-b "$TRUNKGUARD_OUTPUT"; then\n'
        '  echo "ERROR[42]: config.c: pjsip.conf line 7:\nbad section" >&2; exit 3\nfi\n'
    )
    act = lab.actuator(reload)
    await act.apply(A)
    with pytest.raises(ActuatorError) as err:
        await act.apply(B)
    assert err.value.reason == "reload"
    assert err.value.message == (
        f"pbx: {lab.output}: reload failed: {reload[0]}: exited with 3: bad section; "
        "previous file restored"
    )
    assert lab.output.read_text() == A_TEXT
    # Loaded B (refused), then A again: the PBX is back on the old file.
    assert lab.runs() == [line(A_TEXT), line(B_TEXT), line(A_TEXT)]
    assert lab.prev.read_text() == A_TEXT
    assert lab.leftovers() == []
    assert not await act.verify(B)
    assert await act.verify(A)
    assert await act.apply(A) is False  # in place and loaded: nothing to do


async def test_failed_first_reload_removes_the_new_file(lab: Lab) -> None:
    reload = lab.reload('[ -e "$TRUNKGUARD_OUTPUT" ] && exit 1\nexit 0\n')
    act = lab.actuator(reload)
    with pytest.raises(ActuatorError) as err:
        await act.apply(A)
    assert err.value.message.endswith("exited with 1; new file removed (there was none before)")
    assert not lab.output.exists() and not lab.prev.exists()
    assert lab.runs() == [line(A_TEXT), "-"]


async def test_restore_whose_reload_also_fails(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    await act.apply(A)
    broken = lab.actuator(lab.reload("echo 'pbx is down' >&2\nexit 1\n"))
    with pytest.raises(ActuatorError) as err:
        await broken.apply(B)
    assert err.value.reason == "reload"
    assert "\n" not in err.value.message
    assert err.value.message.endswith(
        "exited with 1: pbx is down; and restoring also failed: reloading the previous file: "
        f"{lab.dir}/reload.sh: exited with 1: pbx is down"
    )
    assert lab.output.read_text() == A_TEXT  # restored, though not known to be loaded
    # Not known to be loaded: verify says no even for the file on disk, and the
    # next apply reloads without rewriting.
    assert not await broken.verify(A)
    lab.reload()  # the PBX is back
    inode = lab.output.stat().st_ino
    assert await broken.apply(A) is True
    assert lab.output.stat().st_ino == inode
    assert lab.runs()[-1] == line(A_TEXT)
    assert await broken.verify(A)


async def test_pending_reload_is_retried_without_rewriting(lab: Lab) -> None:
    # The reload fails and so does restoring (the script turns .prev into a directory):
    # the new file stays on disk, not loaded, and the next apply only reloads.
    flag = lab.dir / "fail"
    act = lab.actuator(
        lab.reload(f'if [ -e "{flag}" ]; then rm "{lab.prev}"; mkdir "{lab.prev}"; exit 1; fi\n')
    )
    await act.apply(A)
    await act.apply(B)  # now there is a .prev (A) to restore
    flag.touch()
    with pytest.raises(ActuatorError) as err:
        await act.apply(A)
    assert err.value.message.endswith("exited with 1; and restoring also failed: Is a directory")
    assert lab.output.read_text() == A_TEXT
    assert not await act.verify(A)  # on disk, not loaded
    flag.unlink()
    lab.prev.rmdir()
    inode = lab.output.stat().st_ino
    assert await act.apply(A) is True
    assert lab.output.stat().st_ino == inode
    assert lab.runs() == [line(A_TEXT), line(B_TEXT), line(A_TEXT), line(A_TEXT)]
    assert await act.verify(A)


async def test_reload_timeout_kills_and_restores(lab: Lab) -> None:
    pidfile = lab.dir / "pid"
    reload = lab.reload(
        f'grep -q carrier-b "$TRUNKGUARD_OUTPUT" && echo $$ > "{pidfile}" && exec sleep 300\n'
        "exit 0\n"
    )
    act = lab.actuator(reload, timeout=0.5)
    await act.apply(A)
    with pytest.raises(ActuatorError) as err:
        await act.apply(B)
    assert err.value.reason == "reload"
    assert err.value.message == (
        f"pbx: {lab.output}: reload failed: {reload[0]}: killed after 0.5s; previous file restored"
    )
    assert not running(int(pidfile.read_text()))  # killed and reaped
    assert lab.output.read_text() == A_TEXT
    assert lab.runs() == [line(A_TEXT), line(B_TEXT), line(A_TEXT)]


async def test_file_mode_is_set_and_restored(lab: Lab) -> None:
    old_umask = os.umask(0o077)  # the mode is exact, whatever the umask
    try:
        act = lab.actuator(lab.reload(), mode=0o640)
        await act.apply(A)
        assert stat.S_IMODE(lab.output.stat().st_mode) == 0o640
        await act.apply(B)
        assert stat.S_IMODE(lab.output.stat().st_mode) == 0o640
        assert stat.S_IMODE(lab.prev.stat().st_mode) == 0o640

        lab.output.chmod(0o600)  # the file the next write replaces, and restores
        failing = lab.actuator(
            lab.reload('grep -q carrier-a "$TRUNKGUARD_OUTPUT" && exit 1\nexit 0\n')
        )
        with pytest.raises(ActuatorError):
            await failing.apply(A)
        assert lab.output.read_text() == B_TEXT
        assert stat.S_IMODE(lab.output.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


async def test_render_error_leaves_the_file_untouched(lab: Lab) -> None:
    act = lab.actuator(lab.reload())
    await act.apply(A)
    before = lab.output.stat()
    lab.template.write_text("ok\n{{ routes.outbound.vars.trunk_nmae }}\n")
    with pytest.raises(ActuatorError) as err:
        await act.apply(B)
    assert err.value.reason == "render"
    assert err.value.message == (
        f"pbx: {lab.template}:2: 'dict object' has no attribute 'trunk_nmae'"
    )
    after = lab.output.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert lab.output.read_text() == A_TEXT
    assert lab.runs() == [line(A_TEXT)]
    assert not lab.prev.exists()
    with pytest.raises(ActuatorError):
        await act.verify(B)


async def test_unwritable_output_is_a_write_error(lab: Lab) -> None:
    spec = TemplateSpec(str(lab.template), str(lab.dir / "missing" / "out.conf"))
    act = TemplateActuator("pbx", spec, context)
    with pytest.raises(ActuatorError) as err:
        await act.apply(A)
    assert err.value.reason == "write"
    assert err.value.message == f"pbx: {lab.dir}/missing/out.conf: No such file or directory"


async def test_output_that_is_a_directory(lab: Lab) -> None:
    lab.output.mkdir()
    act = lab.actuator(lab.reload())
    with pytest.raises(ActuatorError) as err:
        await act.apply(A)
    assert err.value.reason == "read"
    assert err.value.message == f"pbx: {lab.output}: Is a directory"
    assert lab.runs() == []


async def test_without_reload(lab: Lab) -> None:
    act = lab.actuator()
    assert await act.apply(A) is True
    assert await act.apply(A) is False
    assert await act.verify(A)


@pytest.mark.usefixtures("restore_logging")
async def test_contents_are_never_logged(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", json_output=True)
    act = lab.actuator(lab.reload('grep -q carrier-b "$TRUNKGUARD_OUTPUT" && exit 1\nexit 0\n'))
    await act.apply(A)
    with pytest.raises(ActuatorError) as err:
        await act.apply(B)
    out = capsys.readouterr().out
    assert '"template wrote"' in out and '"template reloaded"' in out
    for secret in ("hunter2", "swordfish"):
        assert secret not in out and secret not in str(err.value)


async def test_file_io_is_off_the_loop(lab: Lab) -> None:
    # The template is a FIFO, so reading it blocks until the feeder thread writes.
    # The feeder writes only once the loop has run while the actuator was reading:
    # were the read on the loop, the loop could not run, and the feeder gives up.
    lab.template.unlink()
    os.mkfifo(lab.template)
    loop = asyncio.get_running_loop()
    reading = asyncio.Event()
    loop_ran = threading.Event()

    def feed() -> bool:
        with open(lab.template, "w") as f:  # returns once the actuator has opened it
            loop.call_soon_threadsafe(reading.set)
            in_time = loop_ran.wait(5)
            f.write(TEMPLATE)
        return in_time

    feeder = asyncio.ensure_future(asyncio.to_thread(feed))
    apply = asyncio.create_task(lab.actuator().apply(A))
    async with asyncio.timeout(10):
        await reading.wait()
        loop_ran.set()
        assert await feeder
        assert await apply is True
    assert lab.output.read_text() == A_TEXT


async def test_converger_repairs_a_hand_edit_within_drift_interval(lab: Lab) -> None:
    reports = Reports()
    act = lab.actuator(lab.reload())
    conv = Converger(act, drift_interval=0.2, on_report=reports)
    task = asyncio.create_task(conv.run())
    try:
        conv.set_desired(B)
        first = await reports.wait(lambda r: r.ok and r.changed)
        assert first.trigger == "desired"
        assert lab.output.read_text() == B_TEXT
        lab.output.write_text("trunk=by-hand\n")
        repaired = await reports.wait(lambda r: r.trigger == "drift")
        assert repaired.ok and repaired.changed
        assert repaired.finished_at - first.finished_at < 0.2 + 1.0
        assert lab.output.read_text() == B_TEXT
        assert lab.runs() == [line(B_TEXT), line(B_TEXT)]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_converger_retries_a_refused_reload(lab: Lab) -> None:
    flag = lab.dir / "refuse"
    flag.touch()
    reports = Reports()
    act = lab.actuator(lab.reload(f'[ -e "{flag}" ] && exit 1\nexit 0\n'))
    conv = Converger(act, drift_interval=10, backoff_initial=0.05, on_report=reports)
    task = asyncio.create_task(conv.run())
    try:
        conv.set_desired(A)
        failed = await reports.wait(lambda r: not r.ok)
        assert failed.error_reason == "reload"
        assert not lab.output.exists()  # removed again: there was none before
        flag.unlink()
        await reports.wait(lambda r: r.ok)
        assert lab.output.read_text() == A_TEXT
        assert conv.converged
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
