"""A real NUT server per test: the dummy-ups driver behind upsd on 127.0.0.1:<free port>.

Needs Debian's nut-server. The binaries are run from /lib/nut directly: the /sbin/upsd
wrapper reads /etc/nut/nut.conf and exits 0 without starting anything while MODE=none.
Everything (configs, .dev file, driver socket, logs) lives under the test's tmp dir,
found by the binaries through NUT_CONFPATH and NUT_STATEPATH.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.lib import procs

UPSD = "/lib/nut/upsd"
DUMMY_UPS = "/lib/nut/dummy-ups"
DEFAULT_VARS = {"ups.status": "OL", "battery.charge": "100", "battery.runtime": "1800"}


class NutServerError(RuntimeError):
    """upsd answered ERR (e.g. "ERR DRIVER-NOT-CONNECTED", "ERR DATA-STALE")."""


def _quote(value: str) -> str:
    """A double-quoted token for upsd.users and .dev files. NUT's parser mangles some
    characters even inside quotes (measured: '"' and '\\' are lost, '#' drops the whole
    line, a tab vanishes), so refuse them rather than serve something else."""
    if re.search(r'["\\#\x00-\x1f\x7f]', value):
        raise ValueError(f"NUT cannot carry a quote, backslash, # or control char: {value!r}")
    return f'"{value}"'


class NutServer:
    """upsd + one dummy-ups UPS whose variables the test sets through the .dev file."""

    host = "127.0.0.1"

    def __init__(self, tmp: Path, ups: str, user: str, password: str, port: int) -> None:
        self.tmp = tmp
        self.ups = ups
        self.user = user
        self.password = password
        self.port = port
        self.password_file = tmp / "password"
        self.dev_file = tmp / f"{ups}.dev"
        self.vars: dict[str, str] = {}  # what the .dev file says; "" = deleted
        self.driver: subprocess.Popen[bytes] | None = None
        self.upsd: subprocess.Popen[bytes] | None = None
        self._mtime = 0
        env = {"NUT_CONFPATH": str(tmp), "NUT_STATEPATH": str(tmp / "state")}
        self._env = {**os.environ, **env}
        # As root both daemons would switch to user "nut", which cannot chdir into
        # the test's state dir: make them keep our own user.
        self._as = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []

    @classmethod
    def start(
        cls,
        tmp: Path,
        ups: str = "ups1",
        vars: Mapping[str, str] | None = None,
        user: str = "monuser",
        password: str = "secret",
        maxage: int = 15,
        timeout: float = 10,
    ) -> NutServer:
        """Start dummy-ups and upsd; return once LIST VAR shows `vars` (default DEFAULT_VARS).

        maxage: upsd's MAXAGE, seconds without driver updates before ERR DATA-STALE.
        """
        port = procs.free_port(socket.SOCK_STREAM, cls.host)
        tmp = tmp / f"nut_{port}"
        (tmp / "state").mkdir(mode=0o700, parents=True)
        srv = cls(tmp, ups, user, password, port)
        fd = os.open(srv.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
        (tmp / "ups.conf").write_text(
            "pollinterval = 1\n"
            f"[{ups}]\n  driver = dummy-ups\n  port = {srv.dev_file.name}\n"
            '  desc = "trunkguard test UPS"\n'
        )
        (tmp / "upsd.conf").write_text(f"LISTEN {cls.host} {port}\nMAXAGE {maxage}\n")
        (tmp / "upsd.users").write_text(
            f"[{user}]\n  password = {_quote(password)}\n  upsmon primary\n"
        )
        for name in ("upsd.conf", "upsd.users"):  # else upsd logs "is world readable"
            (tmp / name).chmod(0o600)
        try:
            srv.set(DEFAULT_VARS if vars is None else vars, wait=False)
            srv.start_driver(wait=False)
            sock = tmp / "state" / f"dummy-ups-{ups}"
            driver = srv.driver
            assert driver is not None
            procs.wait_for(lambda: sock.exists() or driver.poll() is not None, timeout, "dummy-ups")
            srv._check_alive(driver, "dummy-ups")
            srv.upsd = srv._spawn([UPSD, *srv._as, "-F"], "upsd.log")
            srv._wait_vars(timeout)
        except BaseException:
            srv.stop()
            raise
        return srv

    def __enter__(self) -> NutServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def read_vars(self) -> dict[str, str]:
        """LIST VAR over a fresh TCP connection; NutServerError on an ERR answer."""
        end = f"END LIST VAR {self.ups}\n".encode()
        buf = b""
        with socket.create_connection((self.host, self.port), timeout=2) as s:
            s.sendall(f"LIST VAR {self.ups}\n".encode())
            while not buf.endswith(end):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"upsd closed the connection after {buf!r}")
                buf += chunk
                if buf.startswith(b"ERR ") and buf.endswith(b"\n"):
                    raise NutServerError(buf.decode().strip())
        out: dict[str, str] = {}
        for line in buf.decode().splitlines():
            if line.startswith("VAR "):  # VAR <ups> <name> "<value with \" and \\ escaped>"
                _, _, name, value = line.split(" ", 3)
                out[name] = re.sub(r"\\(.)", r"\1", value[1:-1])
        return out

    def set(self, vars: Mapping[str, str], wait: bool = True, timeout: float = 10) -> None:
        """Merge `vars` into the .dev file ("" deletes a variable); by default wait until
        upsd serves them (about 1 s: dummy-ups checks the file's mtime every second)."""
        merged = {**self.vars, **vars}
        for name in merged:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(f"bad NUT variable name {name!r}")
        body = "".join(f"{k}: {_quote(v)}\n" for k, v in merged.items())
        self.vars = merged
        tmp = self.dev_file.with_suffix(".tmp")
        tmp.write_text(body)
        # dummy-ups (.dev = mode dummy-once) re-reads the file only when st_mtime, in
        # whole seconds, differs from the last read: give every write its own second.
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        os.replace(tmp, self.dev_file)
        if wait:
            self._wait_vars(timeout)

    def set_vars(self, **vars: str) -> None:
        """set() with "_" for "." in names: set_vars(ups_status="OB DISCHRG")."""
        self.set({k.replace("_", "."): v for k, v in vars.items()})

    def kill_driver(self, wait: bool = True, timeout: float = 10) -> None:
        """SIGKILL dummy-ups; upsd then answers ERR DRIVER-NOT-CONNECTED at once."""
        if self.driver is not None:
            self.driver.kill()
            self.driver.wait(timeout)
            self.driver = None
        if wait:
            procs.wait_for(
                lambda: self._error() == "ERR DRIVER-NOT-CONNECTED", timeout, "upsd to notice"
            )

    def signal_driver(self, sig: int) -> None:
        """E.g. SIGSTOP: upsd answers ERR DATA-STALE about `maxage` s later; SIGCONT heals."""
        assert self.driver is not None, "driver not running"
        self.driver.send_signal(sig)

    def start_driver(self, wait: bool = True, timeout: float = 10) -> None:
        """(Re)start dummy-ups; by default wait until upsd serves the .dev file's values
        (upsd reconnects to a restarted driver within about 1 s, showing "WAIT" first)."""
        assert self.driver is None, "driver already running"
        self.driver = self._spawn([DUMMY_UPS, "-a", self.ups, *self._as, "-F"], "dummy-ups.log")
        if wait:
            self._wait_vars(timeout)

    def stop(self) -> None:
        """Stop upsd and the driver (by their PIDs, SIGTERM then SIGKILL); idempotent."""
        for proc in (self.upsd, self.driver):
            if proc is not None:
                procs.stop(proc)
        self.upsd = self.driver = None

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / log, "ab") as out:  # append: keep the log across restarts
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env
            )

    def _check_alive(self, proc: subprocess.Popen[bytes], name: str) -> None:
        if proc.poll() is not None:
            log = (self.tmp / f"{name}.log").read_text()[-1000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log}")

    def _error(self) -> str | None:
        try:
            self.read_vars()
        except (NutServerError, OSError) as e:
            return str(e)
        return None

    def _wait_vars(self, timeout: float) -> None:
        """Wait until upsd serves every variable of the .dev file (and no deleted one)."""

        def ready() -> bool:
            for proc, name in ((self.upsd, "upsd"), (self.driver, "dummy-ups")):
                if proc is not None:
                    self._check_alive(proc, name)
            try:
                got = self.read_vars()
            except (NutServerError, OSError):  # not listening yet, driver not connected
                return False
            return all(got.get(k, "") == v for k, v in self.vars.items())

        procs.wait_for(ready, timeout, f"upsd on {self.host}:{self.port} to serve {self.vars}")
