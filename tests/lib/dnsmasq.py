"""A real dnsmasq per test, serving only the records the test gives it.

    with dns_server(tmp_path, records=[
        "naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
        "srv-host=_sip._udp.carrier.test,a.carrier.test,5060,10,60",  # target,port,prio,weight
        "host-record=a.carrier.test,127.0.0.2",
        "local-ttl=30",  # TTL of every configured record (host-record may give its own)
    ]) as dns:
        SipResolver(nameservers=[dns.host], port=dns.port)

Quirks (dnsmasq 2.90):
- Without upstream servers, a name dnsmasq has no data for is answered REFUSED, not
  NXDOMAIN. `local=/<domain>/` makes it answer NXDOMAIN / NODATA instead; the helper
  adds one line for each of `local_domains` (default: the whole `test` TLD).
- `srv-host` takes target, port, priority, weight (not BIND's priority weight port).
- Records default to TTL 0 (clients must not cache); `local-ttl=N` sets SRV, NAPTR and
  host-record TTLs, and `host-record=name,addr,TTL` overrides it per record.
- NODATA answers carry an SOA with a 300 s TTL (negative-caching time).
- `--log-queries` with `--log-facility=-` logs `query[SRV] name from 127.0.0.1` lines to
  stderr, which the helper sends to `<workdir>/dnsmasq.log`; `queries()` parses them.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lib import procs

DNSMASQ = "/usr/sbin/dnsmasq"
_QUERY = re.compile(r"query\[(\w+)\] (\S+) from ")


@dataclass
class DnsServer:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path
    log: Path

    @property
    def nameservers(self) -> list[str]:
        return [self.host]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def queries(self) -> list[tuple[str, str]]:
        """(type, name) of every query received so far, in order, e.g. ("SRV", "_sip...")."""
        return [(m.group(1), m.group(2)) for m in _QUERY.finditer(self.log_text())]

    def wait_queries(self, count: int, timeout: float = 2.0) -> list[tuple[str, str]]:
        """The log is written asynchronously to our reads: wait for `count` queries."""
        end = time.monotonic() + timeout
        while len(q := self.queries()) < count and time.monotonic() < end:
            time.sleep(0.01)
        return q


def _start(workdir: Path, conf: Path, host: str) -> DnsServer | None:
    port = procs.free_port(socket.SOCK_DGRAM, host)
    log = workdir / f"dnsmasq_{port}.log"
    argv = [
        DNSMASQ,
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        f"--port={port}",
        f"--listen-address={host}",
        "--bind-interfaces",
        f"--conf-file={conf}",
        "--log-queries",
        "--log-facility=-",  # stderr
        "--pid-file=",  # none: no /run file to clean up
        "--cache-size=0",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        procs.wait_for(
            lambda: procs.udp_bound(port) or proc.poll() is not None,
            10,
            f"dnsmasq on {host}:{port}",
        )
    except BaseException:
        procs.stop(proc)
        raise
    if proc.poll() is not None:
        text = log.read_text(errors="replace")
        if "Address already in use" in text:  # lost the race for the port (UDP or TCP)
            return None
        raise RuntimeError(f"dnsmasq exited {proc.returncode}: {text[-1000:]}")
    return DnsServer(host, port, proc, conf, log)


@contextmanager
def dns_server(
    tmp: Path, *, records: Sequence[str], local_domains: Sequence[str] = ("test",)
) -> Iterator[DnsServer]:
    """Start dnsmasq on 127.0.0.1:<free port> with `records` (dnsmasq.conf lines, without
    the leading "--"); stopped by PID at exit."""
    host = "127.0.0.1"
    workdir = tmp / "dnsmasq"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"dnsmasq_{len(list(workdir.glob('*.conf')))}.conf"
    lines = [f"local=/{d.strip('.')}/" for d in local_domains]
    conf.write_text("\n".join([*lines, *records, ""]))
    server = None
    for _ in range(5):
        server = _start(workdir, conf, host)
        if server is not None:
            break
    if server is None:
        raise RuntimeError("dnsmasq: no free port after 5 attempts")
    try:
        yield server
    finally:
        procs.stop(server.proc)
