"""CommandActuator running real programs (small sh scripts given as argv)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.lib.core import routes
from trunkguard.act.base import ActuatorError
from trunkguard.act.command import CommandActuator, CommandSpec

pytestmark = pytest.mark.integration


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text("set -u\n" + body)
    return ("/bin/sh", str(path))


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(5):
            await ready
    finally:
        loop.remove_reader(fd)


async def gone(*pids: int) -> None:
    """Wait for processes that are not our children to die (pidfd: no polling)."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            await readable(fd)
        finally:
            os.close(fd)


async def test_minimal_environment_and_no_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUNKGUARD_MQTT_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    out = tmp_path / "environ"
    # /proc/$$/environ is exactly what exec() gave the program.
    argv = script(tmp_path, "env.sh", f'cat /proc/$$/environ > "{out}"\n')
    act = CommandActuator(
        "cmd",
        {("g", "A"): CommandSpec(argv), ("g", "B"): CommandSpec(argv)},
        env={"TRUNKGUARD_SITE": "bj1", "TRUNKGUARD_NODE": "sbc2"},
    )

    def seen() -> dict[str, str]:
        pairs = out.read_bytes().decode().split("\0")
        return dict(p.split("=", 1) for p in pairs if p)

    await act.apply(routes({"g": "A"}))
    assert seen() == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TRUNKGUARD_GROUP": "g",
        "TRUNKGUARD_PATH": "A",
        "TRUNKGUARD_PREVIOUS_PATH": "",
        "TRUNKGUARD_SITE": "bj1",
        "TRUNKGUARD_NODE": "sbc2",
    }
    await act.apply(routes({"g": "B"}))
    env = seen()
    assert env["TRUNKGUARD_PATH"] == "B" and env["TRUNKGUARD_PREVIOUS_PATH"] == "A"
    assert "hunter2" not in out.read_text() and "AWS_SECRET_ACCESS_KEY" not in env


async def test_stdin_is_devnull(tmp_path: Path) -> None:
    argv = script(tmp_path, "stdin.sh", '[ "$(readlink /proc/$$/fd/0)" = /dev/null ]\n')
    await CommandActuator("cmd", {("g", "A"): CommandSpec(argv)}).apply(routes({"g": "A"}))


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        "hang.sh",
        f'sleep 300 &\necho $! > "{tmp_path}/grandchild"\necho $$ > "{tmp_path}/child"\nwait\n',
    )
    act = CommandActuator("cmd", {("g", "A"): CommandSpec(argv, timeout=1.0)})
    pids: list[int] = []
    try:
        with pytest.raises(ActuatorError) as err:
            await act.apply(routes({"g": "A"}))
        pids = [int((tmp_path / n).read_text()) for n in ("child", "grandchild")]
        await gone(*pids)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert err.value.reason == "timeout" and "killed after 1s" in str(err.value)
    assert not await act.verify(routes({"g": "A"}))


async def test_nonzero_exit_reports_code_and_last_stderr_line(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        "fail.sh",
        'echo "switching trunk" >&2\necho "carrier B: 503 Service Unavailable" >&2\n'
        'echo "" >&2\necho "   " >&2\nexit 3\n',
    )
    act = CommandActuator("cmd", {("g", "A"): CommandSpec(argv)})
    with pytest.raises(ActuatorError) as err:
        await act.apply(routes({"g": "A"}))
    assert err.value.reason == "exit"
    msg = str(err.value)
    assert "exited with 3" in msg and msg.endswith("carrier B: 503 Service Unavailable")
    assert "\n" not in msg and "switching trunk" not in msg


async def test_long_stderr_line_is_truncated(tmp_path: Path) -> None:
    long_line = "x" * 5000
    argv = script(tmp_path, "long.sh", f'echo "{long_line}" >&2\nexit 1\n')
    with pytest.raises(ActuatorError) as err:
        await CommandActuator("cmd", {("g", "A"): CommandSpec(argv)}).apply(routes({"g": "A"}))
    assert "x" * 200 in str(err.value) and "x" * 201 not in str(err.value)


async def test_killed_by_signal(tmp_path: Path) -> None:
    argv = script(tmp_path, "sig.sh", "kill -TERM $$\n")
    with pytest.raises(ActuatorError) as err:
        await CommandActuator("cmd", {("g", "A"): CommandSpec(argv)}).apply(routes({"g": "A"}))
    assert err.value.reason == "exit" and "killed by signal 15" in str(err.value)


async def test_spawn_failure(tmp_path: Path) -> None:
    act = CommandActuator("cmd", {("g", "A"): CommandSpec((str(tmp_path / "missing"),))})
    with pytest.raises(ActuatorError) as err:
        await act.apply(routes({"g": "A"}))
    assert err.value.reason == "spawn" and "missing" in str(err.value)
    nul = CommandActuator("cmd", {("g", "A"): CommandSpec(("/bin/true", "a\0b"))})
    with pytest.raises(ActuatorError) as err:
        await nul.apply(routes({"g": "A"}))
    assert err.value.reason == "spawn"


async def test_shell_metacharacters_are_passed_literally(tmp_path: Path) -> None:
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    pwned = tmp_path / "pwned"
    args = (
        f"; rm -rf {victim}",
        f"$(touch {pwned})",
        f"`touch {pwned}`",
        f"a b | touch {pwned} && echo > {pwned}",
        "*",
    )
    out = tmp_path / "args"
    argv = script(tmp_path, "args.sh", 'for a in "$@"; do printf "%s\\n" "$a"; done > "$TG_OUT"\n')
    act = CommandActuator(
        "cmd", {("g", "A"): CommandSpec((*argv, *args))}, env={"TG_OUT": str(out)}
    )
    await act.apply(routes({"g": "A"}))
    assert out.read_text().splitlines() == list(args)
    assert (victim / "keep").read_text() == "precious"
    assert not pwned.exists()
    # Nor is argv[0] ever interpreted.
    evil = CommandActuator("cmd", {("g", "A"): CommandSpec((f"/bin/true; touch {pwned}",))})
    with pytest.raises(ActuatorError) as err:
        await evil.apply(routes({"g": "A"}))
    assert err.value.reason == "spawn" and not pwned.exists()


async def test_verify_command(tmp_path: Path) -> None:
    state, runs = tmp_path / "state", tmp_path / "runs"
    switch = script(
        tmp_path, "switch.sh", f'echo "$TRUNKGUARD_PATH" > "{state}"\necho run >> "{runs}"\n'
    )
    check = script(tmp_path, "check.sh", f'[ "$(cat "{state}")" = "$TRUNKGUARD_PATH" ]\n')
    commands = {(("g", p)): CommandSpec(switch, verify=check) for p in ("A", "B")}
    act = CommandActuator("cmd", commands)

    assert not await act.verify(routes({"g": "A"}))  # no state file yet
    await act.apply(routes({"g": "A"}))
    assert await act.verify(routes({"g": "A"})) and not await act.verify(routes({"g": "B"}))
    assert runs.read_text().count("run") == 1

    state.write_text("B\n")  # someone switched it by hand
    assert not await act.verify(routes({"g": "A"}))
    await act.apply(routes({"g": "A"}))  # re-run although A was the last path applied
    assert await act.verify(routes({"g": "A"}))
    assert runs.read_text().count("run") == 2

    # A restarted daemon learns from verify that A is in place: no re-run.
    fresh = CommandActuator("cmd", commands)
    assert await fresh.verify(routes({"g": "A"}))
    await fresh.apply(routes({"g": "A"}))
    assert runs.read_text().count("run") == 2


async def test_same_desired_twice_runs_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = script(tmp_path, "count.sh", f'echo "$TRUNKGUARD_PATH" >> "{runs}"\n')
    act = CommandActuator("cmd", {("g", "A"): CommandSpec(argv), ("g", "B"): CommandSpec(argv)})
    assert not await act.verify(routes({"g": "A"}))
    await act.apply(routes({"g": "A"}))
    assert await act.verify(routes({"g": "A"}))
    await act.apply(routes({"g": "A"}))
    await act.apply(routes({"g": "A", "other": "X"}))  # groups without commands are ignored
    assert runs.read_text().split() == ["A"]
    await act.apply(routes({"g": "B"}))
    assert runs.read_text().split() == ["A", "B"]


async def test_one_failing_group_does_not_block_the_others(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ok = script(tmp_path, "ok.sh", f'echo "$TRUNKGUARD_GROUP" >> "{runs}"\n')
    bad = script(tmp_path, "bad.sh", 'echo "no route to carrier" >&2\nexit 2\n')
    act = CommandActuator(
        "cmd",
        {("g1", "A"): CommandSpec(bad), ("g2", "A"): CommandSpec(ok), ("g3", "A"): CommandSpec(ok)},
    )
    desired = routes({"g1": "A", "g2": "A", "g3": "A"})
    with pytest.raises(ActuatorError) as err:
        await act.apply(desired)
    assert err.value.reason == "exit" and "g1->A" in str(err.value)
    assert runs.read_text().split() == ["g2", "g3"]
    assert not await act.verify(desired)
    with pytest.raises(ActuatorError):
        await act.apply(desired)  # only the failed group is retried
    assert runs.read_text().split() == ["g2", "g3"]


async def test_cancellation_kills_the_running_program(tmp_path: Path) -> None:
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    argv = script(tmp_path, "slow.sh", f'echo $$ > "{fifo}"\nexec sleep 300\n')
    act = CommandActuator("cmd", {("g", "A"): CommandSpec(argv, timeout=60)})
    # O_RDWR: the open does not wait for the writer, and we never see a false EOF.
    ready = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    task = asyncio.create_task(act.apply(routes({"g": "A"})))
    pid = 0
    try:
        await readable(ready)  # the program is up and told us its PID
        pid = int(os.read(ready, 64))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not alive(pid)  # killed and reaped before apply returned
    finally:
        os.close(ready)
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_spec_validation() -> None:
    assert CommandSpec(["/bin/true"]).argv == ("/bin/true",)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CommandSpec(())
    with pytest.raises(ValueError):
        CommandSpec(("/bin/true",), timeout=0)
    with pytest.raises(ValueError):
        CommandSpec(("/bin/true",), verify=())
