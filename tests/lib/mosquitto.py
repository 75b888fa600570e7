"""A real mosquitto broker per test: own config, port, password file and ACL."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lib import procs


class Broker:
    """A running mosquitto; restart() keeps the port (retained messages are lost:
    persistence is off, which is exactly what a crashed broker looks like)."""

    def __init__(self, conf: Path, host: str, port: int, netns: str | None = None) -> None:
        self.conf = conf
        self.host = host
        self.port = port
        self.netns = netns
        self.log = conf.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls: TlsFiles | None = None

    def start(self, timeout: float = 10) -> None:
        assert self.proc is None, "broker already running"
        with open(self.log, "ab") as log:  # append: keep the log across restarts
            argv = ["mosquitto", "-c", str(self.conf)]
            if self.netns:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = self.proc
        procs.wait_for(
            lambda: procs.tcp_listening(self.port, self.netns) or proc.poll() is not None,
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

    def kill(self) -> None:
        """Crash the broker (SIGKILL): its connections are reset, nothing is sent."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def signal(self, sig: int) -> None:
        """E.g. SIGSTOP to freeze the broker with connections open, SIGCONT to resume."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(tmp: Path, san: str = "IP:127.0.0.1") -> TlsFiles:
    """A throwaway CA and a server certificate for `san`, made with the openssl CLI."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, crt = (
        tmp / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt")
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ext = tmp / "ext.cnf"
    ext.write_text(f"subjectAltName={san}\n")
    for argv in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=tg-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=tg-broker"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            crt,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True)
    return TlsFiles(ca, crt, key)


def _config(
    tmp: Path,
    host: str,
    port: int,
    users: dict[str, str] | None,
    acl: str | None,
    extra_conf: str,
    tls: TlsFiles | None,
) -> Path:
    lines = [f"listener {port} {host}"]
    if tls is not None:  # listener options must follow their listener line
        lines += [f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
    lines += [
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
    tmp: Path,
    *,
    users: dict[str, str] | None = None,
    acl: str | None = None,
    extra_conf: str = "",
    tls: TlsFiles | None = None,
    netns: str | None = None,
) -> Iterator[Broker]:
    """Start mosquitto on 127.0.0.1:<free port> (in `netns`, if given); stopped by PID.

    users: name -> password (anonymous access is then refused); acl: acl_file text;
    extra_conf: more mosquitto.conf lines; tls: serve MQTT over TLS (see make_tls()).
    """
    host = "127.0.0.1"
    port = procs.free_port(socket.SOCK_STREAM, host)
    workdir = tmp / f"mosquitto_{port}"
    workdir.mkdir(parents=True)
    b = Broker(_config(workdir, host, port, users, acl, extra_conf, tls), host, port, netns)
    b.tls = tls
    b.start()
    try:
        yield b
    finally:
        b.stop()
