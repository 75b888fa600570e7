"""UdpProber, OptionsResponder and ping() against real peers: sipp, closed ports,
silent hosts in network namespaces, and a forging UDP server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lib import procs
from tests.lib.netns import Netns, namespaces, veth
from tests.lib.sipp import options_responder
from trunkguard.core.classify import OkCodes, classify
from trunkguard.core.events import ProbeOutcome
from trunkguard.sip.message import parse_request
from trunkguard.sip.ping import ping
from trunkguard.sip.prober import UdpProber
from trunkguard.sip.uas import OptionsResponder
from trunkguard.sip.uri import parse_uri

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CARRIER_IP, CLIENT_IP = "192.0.2.1", "192.0.2.2"  # TEST-NET-1 only


@pytest.fixture
def sipp_200(tmp_path: Path) -> Iterator[int]:
    port = procs.free_port()
    with options_responder(tmp_path, "127.0.0.1", port, 200):
        yield port


@pytest.fixture
def sipp_403(tmp_path: Path) -> Iterator[int]:
    port = procs.free_port()
    with options_responder(tmp_path, "127.0.0.1", port, 403):
        yield port


def closed_port() -> int:
    return procs.free_port()  # nobody listens once free_port's socket is closed


async def test_sipp_200_gives_response_with_rtt(sipp_200: int) -> None:
    unmatched: list[str] = []
    async with UdpProber(user_agent="trunkguard-test", on_unmatched=unmatched.append) as prober:
        out = await prober.probe(
            "127.0.0.1", sipp_200, request_uri=f"sip:127.0.0.1:{sipp_200}", timeout=2.0
        )
        assert (out.reason, out.code, out.phrase) == ("response", 200, "OK")
        assert out.rtt is not None and 0 < out.rtt < 1.0
        assert prober.outstanding == 0
    assert unmatched == []


async def test_sipp_403_classified_by_ok_codes(sipp_403: int) -> None:
    async with UdpProber(user_agent="trunkguard-test") as prober:
        out = await prober.probe_uri(parse_uri(f"sip:127.0.0.1:{sipp_403}"), timeout=2.0)
    assert (out.reason, out.code) == ("response", 403)
    v = classify(out, target="t", ok_codes=OkCodes.default(), retry_after_cap=60)
    assert not v.ok and v.reason == "403 Forbidden"
    assert classify(out, target="t", ok_codes=OkCodes.parse(["2xx", "403"]), retry_after_cap=60).ok


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_closed_port_is_refused_at_once(host: str) -> None:
    port, timeout = closed_port(), 2.0
    async with UdpProber(user_agent="trunkguard-test") as prober:
        start = time.monotonic()
        out = await prober.probe(host, port, request_uri=f"sip:{host}", timeout=timeout)
        elapsed = time.monotonic() - start
        assert out.reason == "refused" and "port unreachable" in out.detail
        assert elapsed < timeout / 4
        # the error was consumed: the shared socket keeps working for the next probe
        responder = await OptionsResponder.start(host, 0)
        try:
            ok = await prober.probe(host, responder.port, request_uri=f"sip:{host}", timeout=2)
        finally:
            responder.close()
        assert (ok.reason, ok.code) == ("response", 200)


async def test_icmp_only_fails_the_probe_it_is_about() -> None:
    # Both datagrams leave in one loop iteration, so the second sendto meets the first
    # one's ICMP as a pending ECONNREFUSED: the prober must drain it and send again.
    responder = await OptionsResponder.start("127.0.0.1", 0)
    try:
        async with UdpProber(user_agent="trunkguard-test") as prober:
            dead, alive = await asyncio.gather(
                prober.probe("127.0.0.1", closed_port(), request_uri="sip:x", timeout=2),
                prober.probe("127.0.0.1", responder.port, request_uri="sip:y", timeout=2),
            )
    finally:
        responder.close()
    assert dead.reason == "refused"
    assert (alive.reason, alive.code) == ("response", 200)


# --- a silent carrier two namespaces away -------------------------------------------------

PROBE_SCRIPT = """
import asyncio, json, sys
from trunkguard.sip.prober import UdpProber
host, port, t1, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
async def main():
    async with UdpProber(user_agent="trunkguard-test", t1=t1) as p:
        o = await p.probe(host, port, request_uri=f"sip:{host}:{port}", timeout=timeout)
    print(json.dumps({"reason": o.reason, "code": o.code, "detail": o.detail, "rtt": o.rtt}))
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Netns, Netns]]:
    with namespaces("cl", "ca") as (client, carrier):
        veth(client, f"{CLIENT_IP}/24", carrier, f"{CARRIER_IP}/24")
        yield client, carrier


def run_probe(ns: Netns, port: int, t1: float, timeout: float) -> tuple[dict[str, Any], float]:
    argv = ns.exec_argv(
        sys.executable, "-c", PROBE_SCRIPT, CARRIER_IP, str(port), str(t1), str(timeout)
    )
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=30, check=True)
    return json.loads(done.stdout), time.monotonic() - start


def drop_udp_in(ns: Netns, port: int) -> None:
    """Netns.drop_udp_in; its one-line script misses the ';' after the chain's '}' that
    nft 1.0.6 demands, so fall back to the same table (ns.undrop() still removes it)."""
    try:
        ns.drop_udp_in(port)
    except subprocess.CalledProcessError:
        ns.nft(
            "table inet tgdrop { chain in { type filter hook input priority -10; "
            f"udp dport {port} drop; }}; }}\n"
        )


def nft_packets(ns: Netns, table: str) -> int:
    listing = json.loads(ns.sh("nft", "-j", "list", "table", "inet", table).stdout)
    return sum(
        expr["counter"]["packets"]
        for item in listing["nftables"]
        if "rule" in item
        for expr in item["rule"]["expr"]
        if "counter" in expr
    )


def test_silent_carrier_times_out_after_timer_e_retransmits(
    lab: tuple[Netns, Netns], tmp_path: Path
) -> None:
    client, carrier = lab
    with options_responder(tmp_path, CARRIER_IP, 5060, 200, netns=carrier.name):
        alive, _ = run_probe(client, 5060, t1=0.1, timeout=2.0)  # the path works...
        carrier.nft(
            "table inet tgcount { chain in { type filter hook input priority -20; "
            "udp dport 5060 counter; }; }\n"
        )
        drop_udp_in(carrier, 5060)  # ...until the carrier goes silent
        try:
            out, elapsed = run_probe(client, 5060, t1=0.1, timeout=1.0)
            packets = nft_packets(carrier, "tgcount")
        finally:
            carrier.undrop()
            carrier.sh("nft", "delete", "table", "inet", "tgcount", check=False)
    assert (alive["reason"], alive["code"]) == ("response", 200)
    assert out["reason"] == "timeout" and out["detail"] == "after 1000ms"
    assert 1.0 <= elapsed < 5.0  # interpreter start-up included
    assert packets == 4  # sent at 0, then Timer E: 0.1, 0.3, 0.7 (1.5 is past the deadline)


def test_icmp_host_unreachable_is_reported(lab: tuple[Netns, Netns]) -> None:
    client, carrier = lab
    carrier.nft(
        "table inet tgreject { chain in { type filter hook input priority -20; "
        "udp dport 5061 reject with icmp type host-unreachable; }; }\n"
    )
    try:
        out, _ = run_probe(client, 5061, t1=0.5, timeout=5.0)
    finally:
        carrier.sh("nft", "delete", "table", "inet", "tgreject", check=False)
    assert out["reason"] == "unreachable" and out["detail"] == "ICMP host unreachable"
    assert float(out["rtt"]) < 1.0


# --- forged answers --------------------------------------------------------------------------


def _header(text: str, name: str) -> str:
    found = re.search(rf"^{name}:[^\r\n]*", text, re.MULTILINE | re.IGNORECASE)
    assert found, name
    return found.group(0)


class Forger(asyncio.DatagramProtocol):
    """For every OPTIONS, answers that must all be rejected, then maybe the real one."""

    def __init__(self, answer: int) -> None:
        self.answer = answer  # how many correct 200s to send after the forgeries
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode()
        via, cid, cseq = _header(text, "Via"), _header(text, "Call-ID"), _header(text, "CSeq")

        def resp(
            code: int = 200, phrase: str = "OK", via: str = via, cid: str = cid, cseq: str = cseq
        ) -> bytes:
            return (
                f"SIP/2.0 {code} {phrase}\r\n{via}\r\n{_header(text, 'From')}\r\n"
                f"{_header(text, 'To')};tag=forger\r\n{cid}\r\n{cseq}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()

        assert self.transport is not None
        send = self.transport.sendto
        send(resp(via=re.sub(r"branch=z9hG4bK\w+", "branch=z9hG4bKforged", via)), addr)
        send(resp(cid="Call-ID: forged@192.0.2.66"), addr)
        send(resp(cseq="CSeq: 2 OPTIONS"), addr)
        self.other.sendto(resp(), addr)  # right fields, wrong source port
        send(b"\x16\x03\x01 definitely not SIP", addr)
        send(resp(100, "Trying"), addr)
        for _ in range(self.answer):
            send(resp(), addr)


async def forger(answer: int) -> tuple[asyncio.DatagramTransport, Forger]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Forger(answer), local_addr=("127.0.0.1", 0)
    )
    return transport, proto


async def test_forged_answers_are_ignored_until_timeout() -> None:
    transport, proto = await forger(answer=0)
    port = transport.get_extra_info("sockname")[1]
    seen: list[str] = []
    try:
        async with UdpProber(user_agent="trunkguard-test", on_unmatched=seen.append) as prober:
            out = await prober.probe("127.0.0.1", port, request_uri="sip:f", timeout=0.6)
    finally:
        transport.close()
        proto.other.close()
    assert out.reason == "timeout"
    assert {"branch", "call_id", "cseq", "source", "garbage"} <= set(seen)


async def test_correct_answer_after_forgeries_wins_and_duplicate_is_late() -> None:
    transport, proto = await forger(answer=2)
    port = transport.get_extra_info("sockname")[1]
    late = asyncio.Event()
    seen: list[str] = []

    def unmatched(reason: str) -> None:
        seen.append(reason)
        if reason == "late":
            late.set()

    try:
        async with UdpProber(user_agent="trunkguard-test", on_unmatched=unmatched) as prober:
            out = await prober.probe("127.0.0.1", port, request_uri="sip:f", timeout=2.0)
            await asyncio.wait_for(late.wait(), 2.0)
    finally:
        transport.close()
        proto.other.close()
    assert (out.reason, out.code, out.phrase) == ("response", 200, "OK")  # not the 100
    assert {"branch", "call_id", "source"} <= set(seen)


# --- lifecycle and floods ----------------------------------------------------------------


class Signal:
    """Wakes a waiter whenever something it watches may have changed (no polling)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def bump(self, *_: object) -> None:
        self._event.set()

    async def until(self, pred: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not pred():
                await self._event.wait()
                self._event.clear()


class Unmatched(Counter[str]):
    """An on_unmatched that counts reasons and wakes whoever waits on `signal`."""

    def __init__(self) -> None:
        super().__init__()
        self.signal = Signal()

    def __call__(self, reason: str) -> None:
        self[reason] += 1
        self.signal.bump()


class Sink(asyncio.DatagramProtocol):
    """A carrier that never answers and counts what reaches it."""

    def __init__(self, signal: Signal) -> None:
        self.received = 0
        self.signal = signal

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        self.signal.bump()


class WatchedOutput(io.StringIO):
    def __init__(self, signal: Signal) -> None:
        super().__init__()
        self.signal = signal

    def write(self, text: str) -> int:
        self.signal.bump()
        return super().write(text)


async def test_cancelled_probe_leaves_nothing_behind() -> None:
    signal = Signal()
    transport, sink = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Sink(signal), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        async with UdpProber(user_agent="trunkguard-test", t1=0.02) as prober:
            task = asyncio.create_task(
                prober.probe("127.0.0.1", port, request_uri="sip:s", timeout=30)
            )
            await signal.until(lambda: sink.received >= 3)  # retransmitting
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert prober.outstanding == 0
            seen = sink.received
            await asyncio.sleep(0.2)  # an observation window: Timer E must be dead
            assert sink.received == seen
    finally:
        transport.close()


async def test_silent_responder_times_out_then_recovers() -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0, code=503)
    try:
        async with UdpProber(user_agent="trunkguard-test", t1=0.05) as prober:
            responder.silent = True
            out = await prober.probe("127.0.0.1", responder.port, request_uri="sip:s", timeout=0.3)
            assert out.reason == "timeout" and responder.requests >= 3
            responder.silent = False
            out = await prober.probe("127.0.0.1", responder.port, request_uri="sip:s", timeout=1)
            assert (out.reason, out.code, out.phrase) == ("response", 503, "Service Unavailable")
    finally:
        responder.close()


async def test_flood_of_unmatched_packets_does_not_grow_memory() -> None:
    """A flood from anywhere is dropped before parsing (reason "source"); forged answers
    from the carrier's own address (what a spoofer sends) are parsed and matched to
    nothing. Every packet is counted, memory stays flat and the next probe succeeds."""
    port = procs.free_port()
    counts = Unmatched()

    responder = await OptionsResponder.start("127.0.0.1", 0)
    assert responder._transport is not None
    spoofer = responder._transport  # sends from the carrier's address, like a forger
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forged = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK%d\r\n"
        b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    try:
        async with UdpProber(
            user_agent="trunkguard-test", source_port=port, on_unmatched=counts
        ) as prober:
            await prober.probe("127.0.0.1", responder.port, request_uri="sip:r", timeout=1)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(20_000):
                packet = forged % i if i % 2 else b"\xff" * 200
                if i % 4 < 2:
                    flood.sendto(packet, ("127.0.0.1", port))
                else:
                    spoofer.sendto(packet, ("127.0.0.1", port))
                if i % 100 == 99:
                    await asyncio.sleep(0)  # let the prober read between bursts
            await counts.signal.until(lambda: counts.total() >= 20_000)
            grown = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            out = await prober.probe("127.0.0.1", responder.port, request_uri="sip:r", timeout=1)
    finally:
        flood.close()
        responder.close()
    assert grown < 256 * 1024
    assert counts == {"source": 10_000, "garbage": 5_000, "branch": 5_000}, counts
    assert (out.reason, out.code) == ("response", 200)


async def test_probe_uri_dns_failure_and_unsupported_transport() -> None:
    async with UdpProber(user_agent="trunkguard-test") as prober:
        out = await prober.probe_uri(parse_uri("sip:no-such-host.invalid"), timeout=5)
        assert out.reason == "dns" and out.detail.startswith("no-such-host.invalid: ")
        out = await prober.probe_uri(parse_uri("sip:h.example;transport=tcp"), timeout=1)
        assert (out.reason, out.detail) == ("send_error", "transport tcp not supported yet")


async def test_probe_uri_resolves_names() -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0)
    try:
        async with UdpProber(user_agent="trunkguard-test", source_address="127.0.0.1") as p:
            out = await p.probe_uri(parse_uri(f"sip:localhost:{responder.port}"), timeout=2)
    finally:
        responder.close()
    assert (out.reason, out.code) == ("response", 200)


# --- ping ------------------------------------------------------------------------------------

SEQ_OK = re.compile(r"^seq=\d+ 200 OK from 127\.0\.0\.1:\d+ rtt=\d+\.\d\d ms$")
SUMMARY = re.compile(
    r"^3 probes, 3 alive, 0 failed, 0% loss; "
    r"rtt min/avg/max = \d+\.\d\d/\d+\.\d\d/\d+\.\d\d ms$"
)


async def test_ping_against_sipp(sipp_200: int) -> None:
    out = io.StringIO()
    code = await ping(
        f"sip:127.0.0.1:{sipp_200}", count=3, interval=0.05, timeout=1.0, ok_codes=["2xx"], out=out
    )
    lines = out.getvalue().splitlines()
    assert code == 0
    assert lines[0] == f"OPTIONS sip:127.0.0.1:{sipp_200} via UDP, timeout 1000 ms"
    assert all(SEQ_OK.match(line) for line in lines[1:4]), lines
    assert lines[4] == f"--- sip:127.0.0.1:{sipp_200} probe statistics ---"
    assert SUMMARY.match(lines[5]), lines[5]


async def test_ping_403_and_closed_port_exit_1(sipp_403: int) -> None:
    out = io.StringIO()
    assert (
        await ping(
            f"sip:127.0.0.1:{sipp_403}",
            count=1,
            interval=0.01,
            timeout=1.0,
            ok_codes=["2xx"],
            out=out,
        )
        == 1
    )
    assert "seq=1 403 Forbidden from" in out.getvalue()
    assert (
        await ping(
            f"sip:127.0.0.1:{sipp_403}",
            count=1,
            interval=0.01,
            timeout=1.0,
            ok_codes=["2xx", "403"],
            out=io.StringIO(),
        )
        == 0
    )
    out = io.StringIO()
    port = closed_port()
    assert (
        await ping(
            f"sip:127.0.0.1:{port}", count=2, interval=0.01, timeout=1.0, ok_codes=["2xx"], out=out
        )
        == 1
    )
    lines = out.getvalue().splitlines()
    assert re.match(
        rf"^seq=2 ICMP port unreachable from 127\.0\.0\.1:{port} in \d+\.\d\d ms$", lines[2]
    ), lines
    assert lines[-1] == "2 probes, 0 alive, 2 failed, 100% loss"


async def test_ping_timeout_line() -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0)
    responder.silent = True
    out = io.StringIO()
    try:
        code = await ping(
            f"sip:127.0.0.1:{responder.port}",
            count=1,
            interval=0.01,
            timeout=0.2,
            ok_codes=["2xx"],
            out=out,
        )
    finally:
        responder.close()
    assert code == 1
    assert out.getvalue().splitlines()[1] == "seq=1 timeout after 200 ms"


async def test_ping_forever_until_cancelled_prints_summary() -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0)
    signal = Signal()
    out = WatchedOutput(signal)
    try:
        task = asyncio.create_task(
            ping(
                f"sip:127.0.0.1:{responder.port}",
                count=0,
                interval=0.01,
                timeout=1.0,
                ok_codes=["2xx"],
                out=out,
            )
        )
        await signal.until(lambda: out.getvalue().count("seq=") >= 3)
        task.cancel()
        code = await task
    finally:
        responder.close()
    assert code == 0
    assert "probe statistics ---" in out.getvalue()


@pytest.mark.parametrize("uri", ["carrier.example.com", "sip:h:99999", "sip:[::1"])
async def test_ping_bad_uri_exit_2_one_line(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert await ping(uri, count=1, interval=1, timeout=1, ok_codes=["2xx"], out=out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"trunkguard probe: bad URI {uri!r}: ")
    assert "Traceback" not in err and out.getvalue() == ""


# --- send(): the callback API ----------------------------------------------------------------


class Outcomes:
    """An on_done that records every call and whether it came from inside send()."""

    def __init__(self, signal: Signal | None = None) -> None:
        self.calls: dict[str, list[ProbeOutcome]] = {}
        self.inside_send = False
        self.reentered = False
        self.signal = signal or Signal()

    def cb(self, name: str) -> Callable[[ProbeOutcome], None]:
        self.calls.setdefault(name, [])

        def on_done(outcome: ProbeOutcome) -> None:
            self.reentered |= self.inside_send
            self.calls[name].append(outcome)
            self.signal.bump()

        return on_done

    def send(self, prober: UdpProber, name: str, host: str, port: int, **kw: Any) -> None:
        self.inside_send = True
        try:
            prober.send(host, port, on_done=self.cb(name), **kw)
        finally:
            self.inside_send = False

    def all_done(self) -> bool:
        return all(self.calls.values())

    async def wait(self, within: float = 5.0) -> None:
        await self.signal.until(self.all_done, within)


class RecordingSink(asyncio.DatagramProtocol):
    """Never answers; keeps the Call-ID of every request that reaches it."""

    def __init__(self, signal: Signal) -> None:
        self.call_ids: Counter[str] = Counter()
        self.signal = signal

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.call_ids[_header(data.decode(), "Call-ID")] += 1
        self.signal.bump()


async def recording_sink(signal: Signal) -> tuple[asyncio.DatagramTransport, RecordingSink, int]:
    transport, sink = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: RecordingSink(signal), local_addr=("127.0.0.1", 0)
    )
    return transport, sink, transport.get_extra_info("sockname")[1]


async def test_send_reports_every_kind_of_outcome_once_from_the_loop() -> None:
    signal = Signal()
    responder = await OptionsResponder.start("127.0.0.1", 0)
    transport, _sink, silent = await recording_sink(signal)
    seen = Outcomes(signal)
    try:
        async with UdpProber(user_agent="trunkguard-test", t1=0.05) as prober:
            for i in range(200):
                seen.send(
                    prober,
                    f"ok{i}",
                    "127.0.0.1",
                    responder.port,
                    request_uri=f"sip:t{i}@127.0.0.1",
                    timeout=2.0,
                )
            seen.send(
                prober, "refused", "127.0.0.1", closed_port(), request_uri="sip:x", timeout=2.0
            )
            seen.send(
                prober,
                "timeout",
                "127.0.0.1",
                silent,
                request_uri="sip:s",
                timeout=0.3,
                to_uri="sip:to@example.com",
            )
            seen.send(
                prober, "expired", "127.0.0.1", responder.port, request_uri="sip:e", timeout=0
            )
            seen.send(
                prober, "family", "::1", responder.port, request_uri="sip:f", timeout=1.0
            )  # no IPv6 responder there: refused as well
            await seen.wait()
            await asyncio.sleep(0.1)  # nothing more may arrive
            assert prober.outstanding == 0
    finally:
        responder.close()
        transport.close()
    assert not seen.reentered
    assert all(len(calls) == 1 for calls in seen.calls.values()), seen.calls
    reasons = {name: calls[0].reason for name, calls in seen.calls.items()}
    assert {reasons[f"ok{i}"] for i in range(200)} == {"response"}
    assert (reasons["refused"], reasons["timeout"], reasons["expired"]) == (
        "refused",
        "timeout",
        "timeout",
    )
    assert reasons["family"] == "refused"
    assert seen.calls["timeout"][0].detail == "after 300ms"
    assert all(
        c[0].rtt is not None and c[0].rtt > 0 for n, c in seen.calls.items() if n.startswith("ok")
    )


async def test_send_argument_errors_raise() -> None:
    async with UdpProber(user_agent="trunkguard-test") as prober:
        with pytest.raises(ValueError):
            prober.send("not-an-ip", 5060, request_uri="sip:x", timeout=1, on_done=print)
        with pytest.raises(ValueError):
            prober.send("127.0.0.1", 5060, request_uri="sip:x\r\nEvil: 1", timeout=1, on_done=print)
        assert prober.outstanding == 0
    with pytest.raises(RuntimeError):  # closed
        prober.send("127.0.0.1", 5060, request_uri="sip:x", timeout=1, on_done=print)

    def elsewhere() -> None:  # a thread without a running loop
        UdpProber(user_agent="t").send(
            "127.0.0.1", 5060, request_uri="sip:x", timeout=1, on_done=print
        )

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(elsewhere)


async def test_source_family_mismatch_is_a_send_error_via_on_done() -> None:
    seen = Outcomes()
    async with UdpProber(user_agent="trunkguard-test", source_address="127.0.0.1") as prober:
        seen.send(prober, "v6", "::1", 5060, request_uri="sip:x", timeout=1)
        assert seen.calls["v6"] == []  # not from inside send()
        await seen.wait()
    assert seen.calls["v6"][0].reason == "send_error"
    assert "cannot reach ::1" in seen.calls["v6"][0].detail


async def test_close_ends_outstanding_probes_once_with_prober_closed() -> None:
    signal = Signal()
    transport, sink, port = await recording_sink(signal)
    seen = Outcomes(signal)
    try:
        prober = UdpProber(user_agent="trunkguard-test", t1=0.02)
        for i in range(5):
            seen.send(prober, f"p{i}", "127.0.0.1", port, request_uri=f"sip:{i}", timeout=0.2)
        waiting = asyncio.ensure_future(
            prober.probe("127.0.0.1", port, request_uri="sip:w", timeout=0.2)
        )
        await signal.until(lambda: len(sink.call_ids) >= 6)
        prober.close()
        assert prober.outstanding == 0
        out = await waiting
        await asyncio.sleep(0.3)  # past every deadline: no timeout may follow
    finally:
        transport.close()
    assert (out.reason, out.detail) == ("send_error", "prober closed")
    for calls in seen.calls.values():
        assert [(c.reason, c.detail) for c in calls] == [("send_error", "prober closed")]


async def test_on_done_exception_is_logged_and_the_reader_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0)

    def broken(outcome: ProbeOutcome) -> None:
        raise RuntimeError("scheduler bug")

    try:
        async with UdpProber(user_agent="trunkguard-test") as prober:
            with caplog.at_level(logging.ERROR, logger="trunkguard.sip.prober"):
                for _ in range(3):
                    prober.send(
                        "127.0.0.1", responder.port, request_uri="sip:b", timeout=1, on_done=broken
                    )
                out = await prober.probe(
                    "127.0.0.1", responder.port, request_uri="sip:ok", timeout=1
                )
                assert prober.outstanding == 0
    finally:
        responder.close()
    assert (out.reason, out.code) == ("response", 200)
    failures = [r for r in caplog.records if "on_done" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)


async def test_retransmissions_and_deadlines_with_many_distinct_timeouts() -> None:
    # More distinct delays than the prober keeps timer lanes for: the overflow uses
    # plain loop timers, and both kinds must retransmit on schedule and time out.
    signal = Signal()
    transport, sink, port = await recording_sink(signal)
    seen = Outcomes(signal)
    timeouts = [0.45 + i / 1000 for i in range(80)]
    try:
        async with UdpProber(user_agent="trunkguard-test", t1=0.05) as prober:
            for i, timeout in enumerate(timeouts):
                seen.send(
                    prober, f"p{i}", "127.0.0.1", port, request_uri=f"sip:{i}", timeout=timeout
                )
            start = time.monotonic()
            await seen.wait()
            elapsed = time.monotonic() - start
    finally:
        transport.close()
    assert not seen.reentered
    for i, timeout in enumerate(timeouts):
        (out,) = seen.calls[f"p{i}"]
        assert (out.reason, out.detail) == ("timeout", f"after {timeout * 1000:.0f}ms")
    assert 0.45 <= elapsed < 1.5
    # sent at 0, then Timer E: 0.05, 0.15, 0.35 (0.75 is past every deadline)
    assert sorted(sink.call_ids.values()) == [4] * len(timeouts)


async def test_error_queue_is_read_only_when_an_error_is_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = Counter[str]()
    real = socket.socket.recvmsg

    def counting(self: socket.socket, *args: Any) -> Any:
        if len(args) > 2 and args[2] & socket.MSG_ERRQUEUE:
            reads["errqueue"] += 1
        return real(self, *args)

    monkeypatch.setattr(socket.socket, "recvmsg", counting)
    responder = await OptionsResponder.start("127.0.0.1", 0)
    seen = Outcomes()
    try:
        async with UdpProber(user_agent="trunkguard-test") as prober:
            for i in range(500):  # in bursts the responder's socket buffer can take
                seen.send(
                    prober, f"p{i}", "127.0.0.1", responder.port, request_uri=f"sip:{i}", timeout=2
                )
                if i % 50 == 49:
                    await seen.wait()
            quiet = reads["errqueue"]
            # ICMP still fails the right probe at once
            out = await prober.probe("127.0.0.1", closed_port(), request_uri="sip:x", timeout=2)
    finally:
        responder.close()
    assert {c[0].reason for c in seen.calls.values()} == {"response"}
    assert quiet < 25  # was one failing recvmsg per datagram (500)
    assert out.reason == "refused" and reads["errqueue"] > quiet


async def test_sockets_get_a_large_receive_buffer() -> None:
    responder = await OptionsResponder.start("127.0.0.1", 0)
    try:
        async with UdpProber(user_agent="trunkguard-test") as prober:
            out = await prober.probe("127.0.0.1", responder.port, request_uri="sip:r", timeout=1)
            (sock,) = prober._socks.values()
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        responder.close()
    assert out.reason == "response"
    assert size >= 4 << 20  # the kernel reports twice what was set; CAP_NET_ADMIN in tests


async def test_on_done_may_close_the_prober() -> None:
    signal = Signal()
    responder = await OptionsResponder.start("127.0.0.1", 0)
    transport, _sink, silent = await recording_sink(signal)
    seen = Outcomes(signal)
    prober = UdpProber(user_agent="trunkguard-test")
    closer = seen.cb("closer")

    def close_on_answer(outcome: ProbeOutcome) -> None:
        closer(outcome)
        prober.close()

    try:
        for i in range(3):
            seen.send(prober, f"silent{i}", "127.0.0.1", silent, request_uri="sip:s", timeout=5)
        prober.send(
            "127.0.0.1", responder.port, request_uri="sip:r", timeout=5, on_done=close_on_answer
        )
        await seen.wait()
        await asyncio.sleep(0.05)
    finally:
        responder.close()
        transport.close()
    assert seen.calls["closer"][0].reason == "response"
    assert all(
        [(c.reason, c.detail) for c in seen.calls[f"silent{i}"]]
        == [("send_error", "prober closed")]
        for i in range(3)
    )


class FirstCopyLost(OptionsResponder):
    """A carrier behind a path that, while `lossy`, loses the first copy of a request."""

    def __init__(self, code: int = 200) -> None:
        super().__init__(code)
        self.lossy = False
        self.seen: set[str] = set()
        self.copies = 0  # datagrams that reached us, lost or not

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.copies += 1
        request = parse_request(data)
        branch = request.via_branch if request else None
        if self.lossy and branch is not None and branch not in self.seen:
            self.seen.add(branch)
            return  # lost on the way
        super().datagram_received(data, addr)


@pytest.mark.parametrize("adaptive", [False, True])
async def test_the_retransmission_interval_follows_the_rtt(adaptive: bool) -> None:
    """RFC 3261's fixed T1 (500 ms, the deadline) resends nothing in time: a path that
    loses one datagram fails every probe. Learnt from a clean answer (RFC 6298, rounded
    to T1/2^k, floor min_t1), the first copy is resent after 62.5 ms and the probe
    lives; timeouts back the interval off again (125, 250, 500 ms: 3, 2, 1 copies)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(FirstCopyLost, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    carrier: FirstCopyLost = transport.get_protocol()  # type: ignore[assignment]
    min_t1 = 0.05 if adaptive else 0.5
    try:
        async with UdpProber(user_agent="trunkguard-test", t1=0.5, min_t1=min_t1) as p:

            async def probe() -> tuple[ProbeOutcome, float, int]:
                start, copies = loop.time(), carrier.copies
                out = await p.probe("127.0.0.1", port, request_uri="sip:c", timeout=0.5)
                return out, loop.time() - start, carrier.copies - copies

            clean, _, _ = await probe()
            assert clean.reason == "response"
            carrier.lossy = True
            for _ in range(3):  # an answer to a resent copy is no RTT sample (Karn)
                out, took, copies = await probe()
                if not adaptive:
                    assert out.reason == "timeout" and copies == 1
                    continue
                assert out.reason == "response", out
                assert 0.06 <= took < 0.2 and copies == 2, (took, copies)
            if adaptive:
                carrier.silent = True
                backoff = [(await probe())[2] for _ in range(4)]
                assert backoff == [4, 3, 2, 1]  # 62.5 ms, then backed off per timeout
    finally:
        transport.close()


def _forged_port_unreachable(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """ICMP port unreachable about a datagram src -> dst, quoting only its UDP header
    (what an off-path forger who guessed our port can build: no branch)."""
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + 8,
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    udp = struct.pack("!HHHH", src[1], dst[1], 8, 0)
    body = b"\x00\x00\x00\x00" + ip + udp
    header = struct.pack("!BBH", 3, 3, 0)
    total = sum(struct.unpack(f"!{len(header + body) // 2}H", header + body))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("!BBH", 3, 3, ~total & 0xFFFF) + body


async def test_a_forged_icmp_without_our_branch_fails_no_probe() -> None:
    """The kernel hands us any ICMP error quoting our ports; one that does not quote the
    probe's 96-bit branch could be forged by anyone, so it ends no probe: the deadline
    decides (and a live carrier's answer still counts)."""
    port = procs.free_port()
    counts = Unmatched()
    responder = await OptionsResponder.start("127.0.0.1", 0)
    responder.silent = True
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        async with UdpProber(
            user_agent="trunkguard-test",
            source_port=port,
            on_unmatched=counts,
        ) as prober:
            loop = asyncio.get_running_loop()
            start = loop.time()
            task = asyncio.create_task(
                prober.probe("127.0.0.1", responder.port, request_uri="sip:r", timeout=0.5)
            )
            await asyncio.sleep(0.05)  # the probe is out (an observation point, not a sync)
            forged = _forged_port_unreachable(("127.0.0.1", port), ("127.0.0.1", responder.port))
            for _ in range(5):
                raw.sendto(forged, ("127.0.0.1", 0))
            out = await task
            took = loop.time() - start
    finally:
        raw.close()
        responder.close()
    assert out.reason == "timeout" and took >= 0.45, (out, took)
    assert counts["icmp"] >= 1, counts


async def test_every_flooded_datagram_is_counted_by_us_or_by_the_kernel() -> None:
    """Sent while the loop is busy, a flood overruns the socket buffer: what we do not
    read, the kernel counts as dropped, and kernel_drops() reports it."""
    port = procs.free_port()
    counts = Unmatched()

    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 60_000
    try:
        async with UdpProber(
            user_agent="trunkguard-test", source_port=port, on_unmatched=counts
        ) as prober:
            out = await prober.probe("127.0.0.1", 9, request_uri="sip:x", timeout=0.5)
            assert out.reason == "refused"  # the socket exists and is read
            for _ in range(sent):  # no await: the loop cannot read meanwhile
                flood.sendto(b"\xff" * 100, ("127.0.0.1", port))
            drops = prober.kernel_drops()
            assert drops > 0
            await counts.signal.until(lambda: counts.total() + drops >= sent)
    finally:
        flood.close()
    assert counts == {"source": sent - drops}, (counts, drops)
