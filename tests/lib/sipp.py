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
def options_responder(
    tmp: Path, ip: str, port: int, code: int = 200, netns: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start sipp as a UAS that answers every OPTIONS with `code`; waits until it listens."""
    scen = tmp / f"options_{code}_{port}.xml"
    scen.write_text(SCENARIO.format(code=code, reason=REASONS.get(code, "Whatever")))
    argv = [
        "sipp",
        "-sf",
        str(scen),
        "-i",
        ip,
        "-p",
        str(port),
        "-nostdin",
        "-bind_local",
        "-trace_err",
        "-error_file",
        str(tmp / f"sipp_{port}.err"),
        "-max_recv_loops",
        "1000",
    ]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    with procs.started(argv, log=tmp / f"sipp_{port}.log") as proc:
        procs.wait_for(
            lambda: procs.udp_bound(port, netns) or proc.poll() is not None,
            10,
            f"sipp on {ip}:{port}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"sipp exited: {(tmp / f'sipp_{port}.log').read_text()[-500:]}")
        yield proc
