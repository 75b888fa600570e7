"""sipp as a carrier answering OPTIONS with a chosen status code."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.lib import procs

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options responder">
  <recv request="OPTIONS" />
  <send>
    <![CDATA[
SIP/2.0 {code} {reason}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
</scenario>
"""

REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}


@contextmanager
def uas(
    tmp: Path,
    name: str,
    scenario: str,
    ip: str,
    port: int,
    *,
    netns: str | None = None,
    media_port: int | None = None,
    extra: tuple[str, ...] = (),  # more sipp options, e.g. ("-rtp_echo",)
) -> Iterator[subprocess.Popen[bytes]]:
    """Start sipp as a UAS running `scenario` on ip:port; waits until it listens.

    Files go to tmp as <name>.xml, <name>.log and <name>.err; media_port binds sipp's
    media socket (for scenarios with SDP) instead of its default."""
    scen = tmp / f"{name}.xml"
    scen.write_text(scenario)
    argv = ["sipp", "-sf", str(scen), "-i", ip, "-p", str(port), "-nostdin", "-bind_local"]
    if media_port is not None:
        argv += ["-mi", ip, "-mp", str(media_port)]
    argv += ["-max_recv_loops", "1000", "-trace_err", "-error_file", str(tmp / f"{name}.err")]
    argv += list(extra)
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = tmp / f"{name}.log"
    with procs.started(argv, log=log) as proc:
        procs.wait_for(
            lambda: procs.udp_bound(port, netns) or proc.poll() is not None,
            10,
            f"sipp on {ip}:{port}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"sipp exited: {log.read_text()[-500:]}")
        yield proc


@contextmanager
def options_responder(
    tmp: Path, ip: str, port: int, code: int = 200, netns: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start sipp as a UAS that answers every OPTIONS with `code`; waits until it listens."""
    text = SCENARIO.format(code=code, reason=REASONS.get(code, "Whatever"))
    with uas(tmp, f"options_{code}_{port}", text, ip, port, netns=netns) as proc:
        yield proc
