"""StreamProber (OPTIONS over TCP and TLS) against real Kamailio listeners and against
misbehaving asyncio peers: silent, resetting, and badly framed."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lib import procs
from tests.lib.kamailio import Kamailio, TlsFiles, kamailio, make_pki
from trunkguard.sip.message import build_response, parse_request
from trunkguard.sip.prober import UdpProber
from trunkguard.sip.stream import StreamProber, TlsSettings

pytestmark = pytest.mark.integration
UA = "trunkguard-test"
TCP = socket.SOCK_STREAM


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory, pki: TlsFiles) -> Iterator[Kamailio]:
    tmp = tmp_path_factory.mktemp("kamailio")
    with kamailio(
        tmp,
        udp_port=procs.free_port(),
        tcp_port=procs.free_port(TCP),
        tls_port=procs.free_port(TCP),
        tls=pki,
    ) as k:
        yield k


@pytest.fixture(scope="module")
def mtls_carrier(tmp_path_factory: pytest.TempPathFactory, pki: TlsFiles) -> Iterator[Kamailio]:
    tmp = tmp_path_factory.mktemp("kamailio_mtls")
    with kamailio(
        tmp, tls_port=procs.free_port(TCP), tls=pki, require_client_cert=True, options_code=503
    ) as k:
        yield k


async def test_udp_options_to_kamailio(carrier: Kamailio) -> None:
    async with UdpProber(user_agent=UA) as prober:
        out = await prober.probe(
            carrier.ip,
            carrier.udp_port or 0,
            request_uri=f"sip:{carrier.ip}:{carrier.udp_port}",
            timeout=2.0,
        )
    assert (out.reason, out.code, out.phrase) == ("response", 200, "OK")


async def test_tcp_options_and_connection_reuse(carrier: Kamailio) -> None:
    port = carrier.tcp_port or 0
    uri = f"sip:{carrier.ip}:{port};transport=tcp"
    async with StreamProber(user_agent=UA) as prober:
        first = await prober.probe(carrier.ip, port, transport="tcp", request_uri=uri, timeout=2.0)
        assert (first.reason, first.code) == ("response", 200), first
        assert first.rtt is not None and 0 < first.rtt < 1.0
        more = await asyncio.gather(
            *(
                prober.probe(carrier.ip, port, transport="tcp", request_uri=uri, timeout=2.0)
                for _ in range(5)
            )
        )
        assert [o.code for o in more] == [200] * 5  # several outstanding on one connection
        assert prober.connections == 1
        assert procs.established(port) == 1
        assert prober.outstanding == 0
    # Kamailio may keep its side a moment; our side must be gone at once
    assert prober.connections == 0


async def test_tls_options_by_name_and_by_ip(carrier: Kamailio, pki: TlsFiles) -> None:
    port = carrier.tls_port or 0
    events: list[tuple[str, str, str]] = []
    tls = TlsSettings(ca_file=str(pki.ca))
    async with StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p:
        by_name = await p.probe(
            carrier.ip,
            port,
            transport="tls",
            server_name="carrier.test",
            request_uri=f"sips:carrier.test:{port}",
            timeout=2.0,
            tls=tls,
        )
        by_ip = await p.probe(
            carrier.ip,
            port,
            transport="tls",
            request_uri=f"sips:{carrier.ip}:{port}",
            timeout=2.0,
            tls=tls,
        )
        again = await p.probe(
            carrier.ip,
            port,
            transport="tls",
            server_name="carrier.test",
            request_uri=f"sips:carrier.test:{port}",
            timeout=2.0,
            tls=tls,
        )
        assert p.connections == 2  # one per TLS identity (SNI), each reused
    assert [(o.reason, o.code) for o in (by_name, by_ip, again)] == [("response", 200)] * 3
    assert events == []


async def test_tls_wrong_name_fails_verification(carrier: Kamailio, pki: TlsFiles) -> None:
    port = carrier.tls_port or 0
    async with StreamProber(user_agent=UA) as p:
        out = await p.probe(
            carrier.ip,
            port,
            transport="tls",
            server_name="other.test",
            request_uri=f"sips:other.test:{port}",
            timeout=2.0,
            tls=TlsSettings(ca_file=str(pki.ca)),
        )
        unverified = await p.probe(
            carrier.ip,
            port,
            transport="tls",
            server_name="x.test",
            request_uri=f"sips:x.test:{port}",
            timeout=2.0,
            tls=TlsSettings(verify=False),
        )
    assert out.reason == "tls"
    assert "certificate verify failed" in out.detail and "other.test" in out.detail
    assert (unverified.reason, unverified.code) == ("response", 200)


async def test_tls_wrong_ca_reported_once(carrier: Kamailio, tmp_path: Path) -> None:
    other = make_pki(tmp_path)
    port = carrier.tls_port or 0
    events: list[tuple[str, str, str]] = []
    async with StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p:
        outs = []
        for _ in range(2):
            t0 = time.monotonic()
            outs.append(
                await p.probe(
                    carrier.ip,
                    port,
                    transport="tls",
                    request_uri=f"sips:{carrier.ip}:{port}",
                    timeout=2.0,
                    tls=TlsSettings(ca_file=str(other.ca)),
                )
            )
            elapsed = time.monotonic() - t0
        assert elapsed < 0.05  # the second probe fell in the backoff window: no new handshake
        await asyncio.sleep(0.6)  # the backoff (0.5 s) is the feature under test, not a sync
        outs.append(
            await p.probe(
                carrier.ip,
                port,
                transport="tls",
                request_uri=f"sips:{carrier.ip}:{port}",
                timeout=2.0,
                tls=TlsSettings(ca_file=str(other.ca)),
            )
        )
    for out in outs:
        assert out.reason == "tls"
        assert out.detail == "certificate verify failed: unable to get local issuer certificate"
    assert events == [(f"tls:{carrier.ip}:{port}", "tls", outs[0].detail)]


async def test_mutual_tls(mtls_carrier: Kamailio, pki: TlsFiles) -> None:
    port = mtls_carrier.tls_port or 0
    uri = f"sips:carrier.test:{port}"
    with_cert = TlsSettings(
        ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    events: list[tuple[str, str, str]] = []
    async with StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p:
        ok = await p.probe(
            mtls_carrier.ip,
            port,
            transport="tls",
            server_name="carrier.test",
            request_uri=uri,
            timeout=2.0,
            tls=with_cert,
        )
        bare = await p.probe(
            mtls_carrier.ip,
            port,
            transport="tls",
            server_name="carrier.test",
            request_uri=uri,
            timeout=2.0,
            tls=TlsSettings(ca_file=str(pki.ca)),
        )
    assert (ok.reason, ok.code) == ("response", 503)  # any answer proves the TLS session
    assert bare.reason == "tls", bare
    assert "certificate" in bare.detail
    assert [e[1] for e in events] == ["tls"]


async def test_refused_is_fast_and_backs_off() -> None:
    port = procs.free_port(TCP)  # nobody listens
    events: list[tuple[str, str, str]] = []
    async with StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p:
        t0 = time.monotonic()
        first = await p.probe(
            "127.0.0.1",
            port,
            transport="tcp",
            timeout=2.0,
            request_uri=f"sip:127.0.0.1:{port};transport=tcp",
        )
        second = await p.probe(
            "127.0.0.1", port, transport="tls", timeout=2.0, request_uri=f"sips:127.0.0.1:{port}"
        )
        third = await p.probe(
            "127.0.0.1",
            port,
            transport="tcp",
            timeout=2.0,
            request_uri=f"sip:127.0.0.1:{port};transport=tcp",
        )
        elapsed = time.monotonic() - t0
    assert [o.reason for o in (first, second, third)] == ["refused"] * 3
    assert elapsed < 0.2
    assert [e[1] for e in events] == ["refused", "refused"]  # one per transport key


# -- misbehaving peers, written here so each misbehaviour is exact ---------------------------

Handler = Callable[["FakePeer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakePeer:
    handler: Handler
    port: int = 0
    accepts: int = 0
    requests: int = 0
    received: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self.writers.append(writer)
        with suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(self, reader, writer)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        data = await reader.readuntil(b"\r\n\r\n")  # our OPTIONS carry no body
        self.requests += 1
        self.received.set()
        return data


@asynccontextmanager
async def fake_peer(handler: Handler) -> AsyncIterator[FakePeer]:
    peer = FakePeer(handler, port=procs.free_port(TCP))
    server = await asyncio.start_server(peer.on_conn, "127.0.0.1", peer.port)
    try:
        yield peer
    finally:
        server.close()
        for w in peer.writers:
            w.transport.abort()
        await server.wait_closed()


def answer(data: bytes, code: int = 200) -> bytes:
    req = parse_request(data)
    assert req is not None
    return build_response(req, code, "OK", "faketag")


async def silent(peer: FakePeer, reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
    while True:
        await peer.read_request(reader)


async def test_wedged_connection_times_out_then_reconnects() -> None:
    events: list[tuple[str, str, str]] = []
    async with (
        fake_peer(silent) as peer,
        StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p,
    ):
        uri = f"sip:127.0.0.1:{peer.port};transport=tcp"
        first = await p.probe("127.0.0.1", peer.port, transport="tcp", request_uri=uri, timeout=0.3)
        assert first.reason == "timeout" and first.detail == "after 300ms"
        assert (peer.accepts, peer.requests) == (1, 1)
        assert p.connections == 0  # closed as wedged
        second = await p.probe(
            "127.0.0.1", peer.port, transport="tcp", request_uri=uri, timeout=0.3
        )
        assert second.reason == "timeout"
        assert peer.accepts == 2  # a fresh connection, no backoff after a wedge
    assert [e[1] for e in events] == ["wedged"]  # logged on change, not per probe


async def test_cancelled_probe_leaves_nothing_behind() -> None:
    async with fake_peer(silent) as peer, StreamProber(user_agent=UA) as p:
        task = asyncio.create_task(
            p.probe("127.0.0.1", peer.port, transport="tcp", request_uri="sip:x", timeout=5.0)
        )
        await peer.received.wait()
        assert p.outstanding == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert p.outstanding == 0
        assert p.connections == 1  # the connection itself is fine


async def test_reset_fails_every_outstanding_probe() -> None:
    async def reset_after_three(
        peer: FakePeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while peer.requests < 3:
            await peer.read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the peer sees RST, not FIN

    events: list[tuple[str, str, str]] = []
    async with (
        fake_peer(reset_after_three) as peer,
        StreamProber(user_agent=UA, on_transport_event=lambda *e: events.append(e)) as p,
    ):
        t0 = time.monotonic()
        outs = await asyncio.gather(
            *(
                p.probe(
                    "127.0.0.1",
                    peer.port,
                    transport="tcp",
                    request_uri=f"sip:{i}@127.0.0.1",
                    timeout=5.0,
                )
                for i in range(3)
            )
        )
        assert time.monotonic() - t0 < 1.0
        assert peer.accepts == 1
        assert p.outstanding == 0 and p.connections == 0
    assert [o.reason for o in outs] == ["reset"] * 3, outs
    assert [e[1] for e in events] == ["reset"]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", id="no-content-length"),
        pytest.param(b"X" * 70_000, id="endless-header"),
        pytest.param(b"SIP/2.0 200 OK\r\nContent-Length: 100000\r\n\r\n", id="huge-body"),
        pytest.param(b"SIP/2.0 200 OK\r\nContent-Length: 2147483648\r\n\r\n", id="2GB-body"),
    ],
)
async def test_bad_framing_drops_connection(reply: bytes) -> None:
    async def bad(
        peer: FakePeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await peer.read_request(reader)
        writer.write(reply)
        await reader.read()  # until the prober hangs up

    async with fake_peer(bad) as peer, StreamProber(user_agent=UA) as p:
        out = await p.probe(
            "127.0.0.1", peer.port, transport="tcp", request_uri="sip:x", timeout=5.0
        )
        assert out.reason == "reset" and out.detail.startswith("protocol error"), out
        assert p.connections == 0 and p.outstanding == 0


async def test_a_byte_at_a_time_answer_fails_at_the_deadline_and_is_dropped() -> None:
    """Slowloris from the carrier's side: a valid answer trickling in never counts, the
    probe fails at its deadline and the connection is dropped (reopened next time)."""
    stop = asyncio.Event()

    async def slow(
        peer: FakePeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await peer.read_request(reader)
        for byte in b"SIP/2.0 200 OK\r\n" + b"X-Pad: " + b"a" * 10_000:
            if stop.is_set():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)  # the trickle itself: this is what is tested
        await reader.read()

    async with fake_peer(slow) as peer, StreamProber(user_agent=UA) as p:
        start = time.monotonic()
        out = await p.probe(
            "127.0.0.1", peer.port, transport="tcp", request_uri="sip:x", timeout=0.5
        )
        stop.set()
        assert out.reason == "timeout" and 0.45 <= time.monotonic() - start < 1.0, out
        assert p.outstanding == 0 and p.connections == 0


async def test_framing_keepalives_compact_length_and_split_writes() -> None:
    unmatched: list[str] = []

    async def chatty(
        peer: FakePeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await peer.read_request(reader)
            resp = answer(data).replace(b"Content-Length: 0", b"l: 4")
            # keepalives, a stray response, then the real one in pieces, with a body
            stray = answer(data).replace(b"branch=z9hG4bK", b"branch=z9hG4bKdead")
            wire = b"\r\n\r\n" + stray + b"\r\n" + resp + b"body"
            for i in range(0, len(wire), 7):
                writer.write(wire[i : i + 7])
                await writer.drain()

    async with (
        fake_peer(chatty) as peer,
        StreamProber(user_agent=UA, on_unmatched=unmatched.append) as p,
    ):
        for _ in range(2):
            out = await p.probe(
                "127.0.0.1", peer.port, transport="tcp", request_uri="sip:x", timeout=2.0
            )
            assert (out.reason, out.code) == ("response", 200), out
        assert peer.accepts == 1
    assert unmatched == ["branch", "branch"]


async def test_source_address_and_shared_source_port() -> None:
    seen: list[tuple[str, int]] = []
    vias: list[str] = []

    async def answering(
        peer: FakePeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        seen.append(writer.get_extra_info("peername")[:2])
        while True:
            data = await peer.read_request(reader)
            vias.append(data.split(b"\r\n")[1].decode())
            writer.write(answer(data))

    sport = procs.free_port(TCP, "127.0.0.2")
    async with (
        fake_peer(answering) as a,
        fake_peer(answering) as b,
        StreamProber(user_agent=UA, source_address="127.0.0.2", source_port=sport) as p,
    ):
        for peer in (a, b, a):
            out = await p.probe(
                "127.0.0.1", peer.port, transport="tcp", request_uri="sip:x", timeout=2.0
            )
            assert (out.reason, out.code) == ("response", 200), out
        assert p.connections == 2
    assert seen == [("127.0.0.2", sport)] * 2  # both connections leave from one address:port
    assert all(
        v.startswith(f"Via: SIP/2.0/TCP 127.0.0.2:{sport};rport;branch=z9hG4bK") for v in vias
    ), vias
