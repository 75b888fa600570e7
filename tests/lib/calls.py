"""Calls with sipp: a carrier that answers INVITE (and OPTIONS, for probes), and a caller
placing calls at a steady rate that logs every call's outcome with its time."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lib import procs, sipp

# One UAS answers both: OPTIONS from the agent's or Kamailio's probes, INVITE from calls.
CARRIER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Record-Route:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=carrier 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send next="end">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <label id="options"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag02[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <label id="end"/>
</scenario>
"""

# The caller: every outcome is logged with sipp's millisecond clock. An error answer,
# or no answer within answer_ms (the caller's patience: a carrier answers in
# milliseconds), is a failed call; a BYE that gets no answer is a torn call (sipp may
# also abort it after its retransmissions, leaving only ANSWERED in the log).
CALLER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller">
  <send retrans="500">
    <![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=caller 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="408" optional="true" next="failed"/>
  <recv response="480" optional="true" next="failed"/>
  <recv response="500" optional="true" next="failed"/>
  <recv response="502" optional="true" next="failed"/>
  <recv response="503" optional="true" next="failed"/>
  <recv response="504" optional="true" next="failed"/>
  <recv response="200" rrs="true" timeout="{answer_ms}" ontimeout="timedout"/>
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <nop><action><log message="ANSWERED [call_number] [clock_tick]"/></action></nop>
  <pause/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="8000" ontimeout="torn"/>
  <nop next="end"><action><log message="COMPLETED [call_number] [clock_tick]"/></action></nop>
  <label id="failed"/>
  <send>
    <![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <nop next="end"><action><log message="FAILED [call_number] [clock_tick]"/></action></nop>
  <label id="timedout"/>
  <nop next="end"><action><log message="FAILED [call_number] [clock_tick]"/></action></nop>
  <label id="torn"/>
  <nop><action><log message="TORN [call_number] [clock_tick]"/></action></nop>
  <label id="end"/>
</scenario>
"""


# OPTIONS answered, every INVITE refused: the carrier that looks fine to pings.
REJECTS_CALLS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="rejects calls">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE"/>
  <send>
    <![CDATA[
SIP/2.0 503 Service Unavailable
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag03[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <recv request="ACK" next="end"/>
  <label id="options"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag02[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <label id="end"/>
</scenario>
"""


@contextmanager
def carrier(
    tmp: Path, ip: str, port: int, netns: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """sipp answering calls (and OPTIONS) on ip:port."""
    name = f"carrier_{ip}_{port}"
    with sipp.uas(tmp, name, CARRIER, ip, port, netns=netns, media_port=port + 10000) as proc:
        yield proc


@dataclass(frozen=True)
class Outcome:
    call: int
    what: str  # ANSWERED | COMPLETED | FAILED | TORN
    tick_ms: int


@dataclass
class Caller:
    proc: subprocess.Popen[bytes]
    log: Path

    def outcomes(self) -> list[Outcome]:
        if not self.log.exists():
            return []
        out = []
        for m in re.finditer(
            r"^(ANSWERED|COMPLETED|FAILED|TORN) (\d+) (\d+)", self.log.read_text(), re.M
        ):
            out.append(Outcome(int(m.group(2)), m.group(1), int(m.group(3))))
        return out


def degraded(outcomes: list[Outcome], rate: float, patience_ms: int = 2000) -> dict[int, str]:
    """Calls that went wrong for the caller: "failed" (an error answer or none) or "late"
    (answered more than patience_ms after it was placed: a carrier answers in
    milliseconds, so seconds mean a timeout and a retry somewhere on the way). Placing
    times come from sipp's pacing: call n at (n - 1) / rate on sipp's clock."""
    out: dict[int, str] = {}
    for o in outcomes:
        if o.what == "FAILED":
            out[o.call] = "failed"
        elif o.what == "ANSWERED" and o.tick_ms - (o.call - 1) * 1000 / rate > patience_ms:
            out[o.call] = "late"
    return out


@contextmanager
def caller(
    tmp: Path,
    target: str,
    *,
    ip: str,
    rate: float,
    duration_ms: int,
    calls: int,
    answer_ms: int = 2000,
    netns: str | None = None,
) -> Iterator[Caller]:
    """sipp placing `calls` calls at `rate` per second, each `duration_ms` long, to target."""
    scen = tmp / "caller.xml"
    scen.write_text(CALLER.replace("{answer_ms}", str(answer_ms)))
    log = tmp / "caller_logs.log"
    argv = [
        "sipp",
        target,
        "-sf",
        str(scen),
        "-i",
        ip,
        "-p",
        "0",
        "-nostdin",
        "-r",
        str(rate),
        "-d",
        str(duration_ms),
        "-m",
        str(calls),
        "-l",
        str(calls),
        "-mi",
        ip,
        "-trace_logs",
        "-log_file",
        str(log),
        "-s",
        "pstn",
        "-max_recv_loops",
        "1000",
    ]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    with procs.started(argv, log=tmp / "caller.log") as proc:
        yield Caller(proc, log)
