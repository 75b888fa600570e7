"""A real mosquitto broker per test: own config, port, password file and ACL."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.lib import procs


class Broker:
    """A running mosquitto; restart() keeps the port (retained messages are lost:
    persistence is off, which is exactly what a crashed broker looks like)."""

    def __init__(self, conf: Path, host: str, port: int) -> None:
        self.conf = conf
        self.host = host
        self.port = port
        self.log = conf.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        assert self.proc is None, "broker already running"
        with open(self.log, "ab") as log:  # append: keep the log across restarts
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = self.proc
        procs.wait_for(
            lambda: procs.tcp_listening(self.port) or proc.poll() is not None,
            timeout,
            f"mosquitto on {self.host}:{self.port}",
        )
        if proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _config(
    tmp: Path, host: str, port: int, users: dict[str, str] | None, acl: str | None, extra_conf: str
) -> Path:
    lines = [
        f"listener {port} {host}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        # Run as ourselves: as root mosquitto would switch to user "mosquitto",
        # which cannot read files in the test's tmp dir.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        f"allow_anonymous {'false' if users else 'true'}",
    ]
    if users:
        passwd = tmp / "passwd"
        for i, (user, password) in enumerate(users.items()):
            flags = ["-c", "-b"] if i == 0 else ["-b"]
            subprocess.run(
                ["mosquitto_passwd", *flags, str(passwd), user, password],
                check=True,
                capture_output=True,
            )
        passwd.chmod(0o600)
        lines.append(f"password_file {passwd}")
    if acl is not None:
        acl_file = tmp / "acl"
        acl_file.write_text(acl)
        acl_file.chmod(0o600)
        lines.append(f"acl_file {acl_file}")
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join([*lines, extra_conf, ""]))
    return conf


@contextmanager
def broker(
    tmp: Path, *, users: dict[str, str] | None = None, acl: str | None = None, extra_conf: str = ""
) -> Iterator[Broker]:
    """Start mosquitto on 127.0.0.1:<free port>; stopped by PID at exit.

    users: name -> password (anonymous access is then refused); acl: acl_file text;
    extra_conf: more mosquitto.conf lines (e.g. a TLS listener).
    """
    host = "127.0.0.1"
    port = procs.free_port(socket.SOCK_STREAM, host)
    workdir = tmp / f"mosquitto_{port}"
    workdir.mkdir(parents=True)
    b = Broker(_config(workdir, host, port, users, acl, extra_conf), host, port)
    b.start()
    try:
        yield b
    finally:
        b.stop()
