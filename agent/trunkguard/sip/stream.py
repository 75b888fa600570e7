"""SIP OPTIONS probes over TCP and TLS on persistent connections.

Carriers that only speak TLS (Teams Direct Routing, many SIP trunks) must be probed over
the same kind of connection calls use, or a broken certificate or a dead TLS listener goes
unnoticed while UDP probes stay green. One connection per (transport, peer, TLS identity)
is kept and reused: a handshake per probe would cost the carrier more than the probe.

Failures are outcomes, never exceptions: connect refused -> "refused", handshake or
verification failure -> "tls", reset/EOF -> "reset", no answer by the deadline ->
"timeout". A connection that stays silent past a probe's deadline is presumed wedged
(half-open, a stuck peer worker) and closed, so the next probe starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from trunkguard.core.events import Outcome, ProbeOutcome
from trunkguard.sip.message import (
    MAX_MESSAGE,
    build_options,
    new_branch,
    new_call_id,
    new_tag,
    parse_response,
)

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,10})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
_WRITE_HIGH = 256 * 1024  # unsent bytes queued on one connection before we call it wedged
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class TlsSettings:
    """How to authenticate a TLS peer and, for mutual TLS, ourselves."""

    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None  # client certificate (mutual TLS, e.g. Teams Direct Routing)
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name to verify; overrides the URI host
    verify: bool = True


_Key = tuple[str, str, int, str | None, TlsSettings | None]


class _Failure(Exception):
    """A connection-level failure, already turned into an outcome reason and detail."""

    def __init__(self, reason: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(eq=False)
class _Probe:
    branch: str
    call_id: str
    future: asyncio.Future[ProbeOutcome]
    sent_at: float


@dataclass(eq=False)
class _Conn:
    key: _Key
    name: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    local: tuple[str, int]
    pending: dict[str, _Probe] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    closed: bool = False


@dataclass
class _PeerState:
    """Why the last connection to a peer failed, and when to try again."""

    reason: str = ""  # an outcome, or "wedged"
    detail: str = ""
    failed: _Failure | None = None  # the last failed connect: repeated while backing off
    delay: float = 0.0
    retry_at: float = 0.0  # loop time; 0: no backoff window open


def _describe_ssl(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if exc.reason:  # e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED -> "tlsv13 alert certificate required"
        return exc.reason.lower().replace("_", " ")
    return str(exc.strerror or exc).splitlines()[0]


def _os_failure(exc: OSError, stage: str) -> _Failure:
    text = f"{stage}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return _Failure(Outcome.REFUSED, text)
    if exc.errno in _UNREACHABLE:
        return _Failure(Outcome.UNREACHABLE, text)
    if isinstance(exc, ConnectionError) or exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return _Failure(Outcome.RESET, text)
    return _Failure(Outcome.SEND_ERROR, text)


def _frame(buf: bytearray) -> bytes | None:
    """Cut one message off the front of buf; None if incomplete. Raises _Failure on bad framing."""
    while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # keepalives between messages (RFC 5626)
        del buf[: 2 if buf[:2] == b"\r\n" else 1]
    end = _HEAD_END.search(buf, 0, MAX_MESSAGE + 4)
    if end is None:
        if len(buf) > MAX_MESSAGE:
            raise _Failure(Outcome.RESET, f"protocol error: header over {MAX_MESSAGE} bytes")
        return None
    length = _CONTENT_LENGTH.search(buf, 0, end.start() + 2)
    if length is None:  # on a stream there is no other way to find the message's end
        raise _Failure(Outcome.RESET, "protocol error: response without Content-Length")
    total = end.end() + int(length.group(1))
    if total > MAX_MESSAGE:
        raise _Failure(
            Outcome.RESET, f"protocol error: message of {total} bytes over {MAX_MESSAGE}"
        )
    if len(buf) < total:
        return None
    message = bytes(buf[:total])
    del buf[:total]
    return message


class StreamProber:
    """OPTIONS over TCP/TLS; matches answers by branch, Call-ID and CSeq on their connection.

    on_transport_event(peer, kind, detail) fires when a peer's transport trouble changes:
    kind is an outcome reason ("refused", "timeout", "tls", "reset", "unreachable", ...) or
    "wedged", and "ok" once a response arrives after any of those. Repeats stay silent.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        source_address: str | None = None,
        source_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        on_unmatched: Callable[[str], None] | None = None,
        on_transport_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._source = str(ipaddress.ip_address(source_address)) if source_address else None
        self._source_port = source_port
        self._user_agent = user_agent
        self._clock = clock
        self._on_unmatched = on_unmatched
        self._on_event = on_transport_event
        self._conns: dict[_Key, _Conn] = {}
        self._connecting: dict[_Key, asyncio.Task[_Conn]] = {}
        self._peers: dict[_Key, _PeerState] = {}
        self._contexts: dict[TlsSettings, ssl.SSLContext] = {}
        self._closed = False

    @property
    def connections(self) -> int:
        return sum(1 for c in self._conns.values() if not c.closed)

    @property
    def outstanding(self) -> int:
        return sum(len(c.pending) for c in self._conns.values())

    async def probe(
        self,
        host: str,
        port: int,
        *,
        transport: str,
        request_uri: str,
        timeout: float,
        server_name: str | None = None,
        tls: TlsSettings | None = None,
    ) -> ProbeOutcome:
        """Probe an IP literal over TCP or TLS; the outcome arrives by `timeout` seconds."""
        if self._closed:
            raise RuntimeError("StreamProber is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        transport = transport.lower()
        if transport not in ("tcp", "tls"):
            return self._outcome(Outcome.SEND_ERROR, f"transport {transport} is not a stream")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return self._outcome(Outcome.SEND_ERROR, f"{host!r} is not an IP address")
        if self._source and ipaddress.ip_address(self._source).version != ip.version:
            return self._outcome(
                Outcome.SEND_ERROR, f"source address {self._source} cannot reach {ip}"
            )
        if transport == "tls":
            tls = tls or TlsSettings()
            server_name = tls.server_name or server_name
        else:
            tls = server_name = None
        key: _Key = (transport, str(ip), port, server_name, tls)
        try:
            conn = await self._connection(key, deadline, timeout)
        except _Failure as f:
            return self._outcome(f.reason, f.detail)
        return await self._exchange(conn, request_uri, deadline, timeout)

    # -- connections ---------------------------------------------------------------------

    async def _connection(self, key: _Key, deadline: float, budget: float) -> _Conn:
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        loop = asyncio.get_running_loop()
        peer = self._peers.get(key)
        if peer is not None and peer.failed is not None and loop.time() < peer.retry_at:
            # in backoff: fail at once rather than hammer a dead peer at fast_interval
            raise _Failure(peer.failed.reason, peer.failed.detail)
        task = self._connecting.get(key)
        if task is None:
            # Shared by every probe that arrives while it runs; bounded by the first
            # probe's deadline, so it cannot outlive the probe that asked for it.
            task = loop.create_task(self._connect(key, deadline, budget))
            self._connecting[key] = task
            task.add_done_callback(lambda t: self._connect_done(key, t))
        # asyncio.wait does not cancel the shared task if this probe is cancelled
        await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not task.done():
            raise _Failure(Outcome.TIMEOUT, f"connect: no answer within {budget * 1000:.0f}ms")
        if task.cancelled():
            raise _Failure(Outcome.SEND_ERROR, "prober closed")
        exc = task.exception()
        if isinstance(exc, _Failure):
            raise exc
        if exc is not None:
            raise _Failure(Outcome.SEND_ERROR, f"connect: {exc}")
        return task.result()

    def _connect_done(self, key: _Key, task: asyncio.Task[_Conn]) -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, _Failure):
            self._connect_failed(key, exc)
        elif exc is None:
            conn = task.result()
            peer = self._peers.get(key)
            if peer is not None:
                peer.retry_at = 0.0  # keep the delay until a response proves the peer sane
            if self._closed:
                self._drop(conn, _Failure(Outcome.SEND_ERROR, "prober closed"))
            else:
                self._conns[key] = conn
                conn.task = asyncio.get_running_loop().create_task(self._read_loop(conn))

    def _connect_failed(self, key: _Key, f: _Failure) -> None:
        peer = self._peers.setdefault(key, _PeerState())
        peer.delay = min(peer.delay * 2, _BACKOFF_MAX) if peer.delay else _BACKOFF_FIRST
        peer.retry_at = asyncio.get_running_loop().time() + peer.delay
        peer.failed = f
        self._note(key, peer, f.reason, f.detail)

    def _note(self, key: _Key, peer: _PeerState, kind: str, detail: str) -> None:
        """Remember the trouble; tell the daemon only when it differs from the last one."""
        if (peer.reason, peer.detail) != (kind, detail):
            peer.reason, peer.detail = kind, detail
            self._event(key, kind, detail)

    def _event(self, key: _Key, kind: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(_name(key), kind, detail)

    async def _connect(self, key: _Key, deadline: float, budget: float) -> _Conn:
        _, host, port, server_name, tls = key
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            ctx = self._context(tls) if tls is not None else None
        except (OSError, ssl.SSLError) as exc:  # unreadable CA file, key not matching cert
            raise _Failure(Outcome.TLS, f"tls setup: {exc.strerror or exc}") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        stage = "connect"
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._source or self._source_port:
                if self._source_port:  # one fixed port shared by connections to many peers
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
                stage = "bind"
                sock.bind((self._source or any_addr, self._source_port))
                stage = "connect"
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, (host, port))
                stage = "tls handshake" if ctx is not None else "connect"
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=ctx,
                    limit=MAX_MESSAGE + 4,
                    server_hostname=(server_name or host) if ctx is not None else None,
                    # past our deadline, so timeout_at (not asyncio's abort) ends a slow handshake
                    ssl_handshake_timeout=deadline - loop.time() + 1.0 if ctx else None,
                )
        except TimeoutError:
            sock.close()
            raise _Failure(
                Outcome.TIMEOUT, f"{stage}: no answer within {budget * 1000:.0f}ms"
            ) from None
        except ssl.SSLError as exc:
            sock.close()
            raise _Failure(Outcome.TLS, _describe_ssl(exc)) from None
        except OSError as exc:
            sock.close()
            raise _os_failure(exc, stage) from None
        except BaseException:
            sock.close()
            raise
        name = writer.get_extra_info("sockname")
        return _Conn(
            key, _name(key), reader, writer, (str(name[0]).partition("%")[0], int(name[1]))
        )

    def _context(self, tls: TlsSettings) -> ssl.SSLContext:
        ctx = self._contexts.get(tls)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=tls.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
            self._contexts[tls] = ctx
        return ctx

    # -- probes on a connection ----------------------------------------------------------

    async def _exchange(
        self, conn: _Conn, request_uri: str, deadline: float, budget: float
    ) -> ProbeOutcome:
        loop = asyncio.get_running_loop()
        transport = conn.key[0]
        local, local_port = conn.local
        me = f"[{local}]" if ":" in local else local
        scheme = "sips" if transport == "tls" else "sip"
        branch = new_branch()
        call_id = new_call_id(me)
        try:
            message = build_options(
                request_uri=request_uri,
                via_host=local,
                via_port=local_port,
                transport=transport.upper(),
                branch=branch,
                call_id=call_id,
                from_uri=f"{scheme}:trunkguard@{me}",
                from_tag=new_tag(),
                to_uri=request_uri,
                cseq=1,
                contact=f"{scheme}:trunkguard@{me}:{local_port};transport={transport}",
                user_agent=self._user_agent,
            )
        except ValueError as exc:
            return self._outcome(Outcome.SEND_ERROR, str(exc))
        if conn.closed:  # dropped between connect and now (close(), a reset)
            return self._outcome(Outcome.RESET, "connection closed before sending")
        p = _Probe(branch, call_id, loop.create_future(), self._clock())
        conn.pending[branch] = p
        expiry = loop.call_at(deadline, self._expire, conn, p, budget)
        try:
            conn.writer.write(message)
            buffered = conn.writer.transport.get_write_buffer_size()
            if buffered > _WRITE_HIGH:  # the peer stopped reading: same as no answer
                self._wedged(conn, f"{buffered} bytes unsent")
            return await p.future
        finally:
            expiry.cancel()
            conn.pending.pop(branch, None)

    def _expire(self, conn: _Conn, p: _Probe, budget: float) -> None:
        if p.future.done():
            return
        p.future.set_result(self._outcome(Outcome.TIMEOUT, f"after {budget * 1000:.0f}ms"))
        # An established connection that answers nothing is wedged (half-open, stuck peer):
        # a fresh connection is the only way to learn whether the peer is really gone.
        self._wedged(conn, f"no answer within {budget * 1000:.0f}ms")

    def _wedged(self, conn: _Conn, why: str) -> None:
        if conn.closed:
            return
        self._note(conn.key, self._peers.setdefault(conn.key, _PeerState()), "wedged", why)
        self._drop(conn, _Failure(Outcome.TIMEOUT, f"connection wedged: {why}"))

    def _drop(self, conn: _Conn, f: _Failure) -> None:
        """Close a connection and fail every probe still waiting on it, all at once."""
        if conn.closed:
            return
        conn.closed = True
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        outcome = self._outcome(f.reason, f.detail)
        for p in list(conn.pending.values()):
            if not p.future.done():
                p.future.set_result(outcome)
        conn.pending.clear()
        conn.writer.transport.abort()  # no graceful close: the peer may not be reading
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    async def _read_loop(self, conn: _Conn) -> None:
        buf = bytearray()
        try:
            while not conn.closed:
                data = await conn.reader.read(MAX_MESSAGE)
                if not data:
                    raise _Failure(Outcome.RESET, "connection closed by peer")
                buf += data
                while (message := _frame(buf)) is not None:
                    self._on_message(conn, message)
        except _Failure as f:
            self._lost(conn, f)
        except ssl.SSLError as exc:  # e.g. a TLS 1.3 server rejecting our certificate
            tls_failure = _Failure(Outcome.TLS, _describe_ssl(exc))
            self._lost(conn, tls_failure)
            self._connect_failed(conn.key, tls_failure)
        except OSError as exc:
            self._lost(conn, _os_failure(exc, "read"))

    def _lost(self, conn: _Conn, f: _Failure) -> None:
        if conn.closed:
            return
        # tls goes through _connect_failed (backoff + change log); a close while nothing is
        # outstanding is the peer's idle timeout (Kamailio: tcp_connection_lifetime), not news
        if f.reason != "tls" and conn.pending:
            self._note(conn.key, self._peers.setdefault(conn.key, _PeerState()), f.reason, f.detail)
        self._drop(conn, f)

    def _on_message(self, conn: _Conn, data: bytes) -> None:
        resp = parse_response(data)
        if resp is None:
            return self._unmatched("garbage")  # a request from the peer, or junk
        p = conn.pending.get(resp.via_branch) if resp.via_branch else None
        if p is None or p.future.done():
            return self._unmatched("branch")
        if resp.call_id != p.call_id:
            return self._unmatched("call_id")
        if resp.cseq_num != 1 or resp.cseq_method != "OPTIONS":
            return self._unmatched("cseq")
        if resp.code < 200:
            return None
        now = self._clock()
        if self._peers.pop(conn.key, None) is not None:  # a sane answer: forget failures
            self._event(conn.key, "ok", f"{resp.code} {resp.phrase}".strip())
        retry = float(resp.retry_after) if resp.retry_after is not None else None
        p.future.set_result(
            ProbeOutcome(
                at=now,
                reason=Outcome.RESPONSE,
                code=resp.code,
                phrase=resp.phrase,
                rtt=now - p.sent_at,
                retry_after=retry,
            )
        )
        return None

    def _unmatched(self, reason: str) -> None:
        if self._on_unmatched is not None:
            self._on_unmatched(reason)

    def _outcome(self, reason: Outcome, detail: str) -> ProbeOutcome:
        return ProbeOutcome(at=self._clock(), reason=reason, detail=detail)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; probes still waiting end with outcome send_error."""
        self._closed = True
        for task in list(self._connecting.values()):
            task.cancel()
        for conn in list(self._conns.values()):
            self._drop(conn, _Failure(Outcome.SEND_ERROR, "prober closed"))

    async def aclose(self) -> None:
        tasks = [
            *self._connecting.values(),
            *(c.task for c in self._conns.values() if c.task is not None),
        ]
        self.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _name(key: _Key) -> str:
    transport, host, port, server_name, _tls = key
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{transport}:{where}" + (f" ({server_name})" if server_name else "")
