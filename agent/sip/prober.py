"""SIP OPTIONS probes over UDP with true per-probe deadlines and immediate ICMP errors.

One non-blocking socket per address family serves every probe. We read it with
loop.add_reader rather than a DatagramProtocol because ICMP errors arrive on the
socket's error queue (IP_RECVERR), which only recvmsg(MSG_ERRQUEUE) can read, and
the error queue tells us *which* destination failed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from agent.core.events import ProbeOutcome
from agent.sip.message import (
    MAX_MESSAGE,
    build_options,
    new_branch,
    new_call_id,
    new_tag,
    parse_response,
)
from agent.sip.uri import SipUri

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_ERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err, then the offender sockaddr
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
_V4_UNREACH = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
               6: "net unknown", 7: "host unknown", 9: "net prohibited", 10: "host prohibited",
               13: "administratively prohibited"}
_V6_UNREACH = {0: "no route", 1: "administratively prohibited", 3: "address unreachable",
               5: "source address failed policy", 6: "reject route"}
_BRANCH_IN_PAYLOAD = re.compile(rb";\s*branch=(z9hG4bK[0-9a-f]+)", re.IGNORECASE)
_BUDGET = 256  # datagrams handled per wake-up, so a flood cannot starve the loop
_RECENT = 1024  # finished branches remembered, to tell "late" answers from forged ones
_ROUTE_TTL = 60.0  # re-learn the local address towards a peer: routes change on failover
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}

Addr = tuple[str, int]


@dataclass(eq=False, slots=True)
class _Probe:
    branch: str
    call_id: str
    dest: Addr
    sock: socket.socket
    message: bytes
    future: asyncio.Future[ProbeOutcome]
    sent_at: float
    interval: float
    proceeding: bool = False  # a 1xx arrived: retransmit every T2 (RFC 3261 17.1.2.2)
    timer: asyncio.TimerHandle | None = None


def icmp_meaning(origin: int, icmp_type: int, code: int) -> tuple[str, str] | None:
    """(outcome reason, text) for an ICMP error about reachability, else None."""
    if origin == SO_EE_ORIGIN_ICMP:
        if icmp_type == 3 and code == 3:
            return "refused", "ICMP port unreachable"
        if icmp_type == 3 and code != 4:  # code 4 is PMTU discovery, not reachability
            return "unreachable", "ICMP " + _V4_UNREACH.get(code, f"unreachable (code {code})")
        if icmp_type == 11:
            return "unreachable", "ICMP time exceeded"
    elif origin == SO_EE_ORIGIN_ICMP6:
        if icmp_type == 1 and code == 4:
            return "refused", "ICMPv6 port unreachable"
        if icmp_type == 1:
            return "unreachable", "ICMPv6 " + _V6_UNREACH.get(code, f"unreachable (code {code})")
        if icmp_type == 3:
            return "unreachable", "ICMPv6 time exceeded"
    return None


def _offender(cmsg: bytes) -> str | None:
    """The address that sent the ICMP error (SO_EE_OFFENDER), maybe a router."""
    raw = cmsg[_EE.size:]
    family = int.from_bytes(raw[:2], sys.byteorder) if len(raw) >= 2 else -1
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def _norm(addr: tuple[object, ...]) -> Addr | None:
    try:
        return str(ipaddress.ip_address(str(addr[0]))), int(str(addr[1]))
    except (ValueError, IndexError):
        return None


def _os_outcome(at: float, exc: OSError, what: str = "") -> ProbeOutcome:
    text = f"{what}{exc.strerror or exc}"
    if exc.errno in _UNREACHABLE:
        return ProbeOutcome(at=at, reason="unreachable", detail=text)
    if exc.errno == errno.ECONNREFUSED:
        return ProbeOutcome(at=at, reason="refused", detail=text)
    return ProbeOutcome(at=at, reason="send_error", detail=text)


class UdpProber:
    """Sends OPTIONS and matches answers by branch, Call-ID, CSeq and source address."""

    def __init__(self, *, user_agent: str, source_address: str | None = None,
                 source_port: int = 0, t1: float = 0.5, t2: float = 4.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_unmatched: Callable[[str], None] | None = None) -> None:
        if not 0 < t1 <= t2:
            raise ValueError(f"need 0 < t1 <= t2, got t1={t1} t2={t2}")
        self._source = str(ipaddress.ip_address(source_address)) if source_address else None
        self._source_port = source_port
        self._user_agent = user_agent
        self._t1, self._t2 = t1, t2
        self._clock = clock
        self._on_unmatched = on_unmatched
        self._socks: dict[int, socket.socket] = {}
        self._pending: dict[str, _Probe] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._routes: dict[str, tuple[str, float]] = {}
        self._buf = bytearray(MAX_MESSAGE + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    # `timeout` is part of the result (a timeout is an outcome, not an exception), so it
    # cannot be an asyncio.timeout() scope around the call (ASYNC109 is off project-wide).
    async def probe_uri(self, uri: SipUri, *, timeout: float) -> ProbeOutcome:
        """Resolve the URI's host (A/AAAA, first answer) and probe it, all within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if uri.transport != "udp":
            return ProbeOutcome(at=self._clock(), reason="send_error",
                                detail=f"transport {uri.transport} not supported yet")
        port = uri.port or 5060
        try:
            host = str(ipaddress.ip_address(uri.host))
        except ValueError:
            resolved = await self._resolve(uri.host, port, deadline, timeout)
            if isinstance(resolved, ProbeOutcome):
                return resolved
            host = resolved
        return await self._probe(host, port, str(uri), None, timeout, deadline)

    async def probe(self, host: str, port: int, *, request_uri: str,
                    timeout: float,
                    to_uri: str | None = None) -> ProbeOutcome:
        """Probe an IP literal; the outcome arrives by `timeout` seconds at the latest."""
        deadline = asyncio.get_running_loop().time() + timeout
        return await self._probe(host, port, request_uri, to_uri, timeout, deadline)

    async def _resolve(self, name: str, port: int, deadline: float,
                       budget: float) -> str | ProbeOutcome:
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC
        if self._source:
            family = socket.AF_INET6 if ":" in self._source else socket.AF_INET
        try:
            async with asyncio.timeout_at(deadline):
                infos = await loop.getaddrinfo(name, port, family=family, type=socket.SOCK_DGRAM,
                                               proto=socket.IPPROTO_UDP)
        except TimeoutError:
            return ProbeOutcome(at=self._clock(), reason="dns",
                                detail=f"{name}: no answer within {budget * 1000:.0f}ms")
        except (OSError, UnicodeError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return ProbeOutcome(at=self._clock(), reason="dns", detail=f"{name}: {text}")
        if not infos:
            return ProbeOutcome(at=self._clock(), reason="dns", detail=f"{name}: no address")
        return str(infos[0][4][0])

    async def _probe(self, host: str, port: int, request_uri: str, to_uri: str | None,
                     budget: float, deadline: float) -> ProbeOutcome:
        if self._closed:
            raise RuntimeError("UdpProber is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:  # its sockets are registered with the first loop
            raise RuntimeError("a UdpProber serves one event loop")
        ip = ipaddress.ip_address(host)  # ValueError: callers pass IP literals only
        dest = (str(ip), port)
        if self._source and ipaddress.ip_address(self._source).version != ip.version:
            return ProbeOutcome(at=self._clock(), reason="send_error",
                                detail=f"source address {self._source} cannot reach {ip}")
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            sock = self._socket(family, loop)
        except OSError as exc:
            return _os_outcome(self._clock(), exc, "bind: ")
        try:
            local = self._local_ip(family, dest[0])
        except OSError as exc:
            return _os_outcome(self._clock(), exc)
        if loop.time() >= deadline:
            return self._timeout_outcome(budget)
        p = self._new_probe(sock, dest, local, request_uri, to_uri, loop)
        expiry = loop.call_at(deadline, self._expire, p, budget)
        try:
            self._transmit(p)
            if not p.future.done():
                p.timer = loop.call_later(self._t1, self._retransmit, p)
            return await p.future
        finally:
            expiry.cancel()
            self._forget(p)

    def _new_probe(self, sock: socket.socket, dest: Addr, local: str, request_uri: str,
                   to_uri: str | None, loop: asyncio.AbstractEventLoop) -> _Probe:
        local_port = int(sock.getsockname()[1])
        me = f"[{local}]" if ":" in local else local
        branch, call_id = new_branch(), new_call_id(me)
        message = build_options(
            request_uri=request_uri, via_host=local, via_port=local_port, branch=branch,
            call_id=call_id, from_uri=f"sip:trunkguard@{me}", from_tag=new_tag(),
            to_uri=to_uri or request_uri, cseq=1, contact=f"sip:trunkguard@{me}:{local_port}",
            user_agent=self._user_agent)
        p = _Probe(branch, call_id, dest, sock, message, loop.create_future(),
                   sent_at=self._clock(), interval=self._t1)
        self._pending[branch] = p
        return p

    def _socket(self, family: int, loop: asyncio.AbstractEventLoop) -> socket.socket:
        sock = self._socks.get(family)
        if sock is not None:
            return sock
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
            sock.bind((self._source or any_addr, self._source_port))
        except OSError:
            sock.close()
            raise
        loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._socks[family] = sock
        return sock

    def _local_ip(self, family: int, ip: str) -> str:
        """The source address the kernel picks towards ip (a route lookup; nothing is sent)."""
        if self._source:
            return self._source
        now = self._clock()
        cached = self._routes.get(ip)
        if cached and cached[1] > now:
            return cached[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            local = str(s.getsockname()[0]).partition("%")[0]
        if len(self._routes) >= 1024:
            self._routes.clear()
        self._routes[ip] = (local, now + _ROUTE_TTL)
        return local

    def _transmit(self, p: _Probe) -> None:
        for attempt in (1, 2):
            try:
                p.sock.sendto(p.message, p.dest)
                return
            except BlockingIOError:
                return  # send buffer full: like a lost packet, Timer E will resend
            except OSError as exc:
                if attempt == 2:
                    self._finish(p, _os_outcome(self._clock(), exc))
                    return
                # A pending ICMP error (sk_err) may surface here: consume it, then retry.
                self._on_readable(p.sock)
                if p.future.done():
                    return

    def _retransmit(self, p: _Probe) -> None:
        if p.future.done():
            return
        self._transmit(p)
        if not p.future.done():
            p.interval = self._t2 if p.proceeding else min(p.interval * 2, self._t2)
            p.timer = asyncio.get_running_loop().call_later(p.interval, self._retransmit, p)

    def _timeout_outcome(self, budget: float) -> ProbeOutcome:
        return ProbeOutcome(at=self._clock(), reason="timeout",
                            detail=f"after {budget * 1000:.0f}ms")

    def _expire(self, p: _Probe, budget: float) -> None:
        self._finish(p, self._timeout_outcome(budget))

    def _finish(self, p: _Probe, outcome: ProbeOutcome) -> None:
        if p.timer is not None:
            p.timer.cancel()
        if not p.future.done():
            p.future.set_result(outcome)

    def _forget(self, p: _Probe) -> None:
        if p.timer is not None:
            p.timer.cancel()
        self._pending.pop(p.branch, None)
        self._finished[p.branch] = None
        if len(self._finished) > _RECENT:
            self._finished.popitem(last=False)

    def _on_readable(self, sock: socket.socket) -> None:
        # EPOLLERR also lands here: always empty the error queue, then read data.
        for _ in range(_BUDGET):
            self._drain_errors(sock)
            try:
                n, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # sk_err reported on read; its detail is on the error queue
            self._on_datagram(bytes(memoryview(self._buf)[:n]), addr)

    def _drain_errors(self, sock: socket.socket) -> None:
        for _ in range(_BUDGET):
            try:
                payload, ancdata, _flags, addr = sock.recvmsg(2048, 1024, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: queue empty
                return
            dest = _norm(addr) if addr else None
            for level, kind, data in ancdata:
                if (level, kind) not in _ERR_CMSGS or len(data) < _EE.size or dest is None:
                    continue
                _errno, origin, icmp_type, code, _pad, _info, _data = _EE.unpack_from(data)
                meaning = icmp_meaning(origin, icmp_type, code)
                if meaning:
                    self._on_icmp(dest, payload, meaning, _offender(data))

    def _on_icmp(self, dest: Addr, payload: bytes, meaning: tuple[str, str],
                 offender: str | None) -> None:
        found = _BRANCH_IN_PAYLOAD.search(payload)
        if found:  # the quoted datagram names the very probe it is about
            p = self._pending.get(found.group(1).decode())
            hit = [p] if p is not None and p.dest == dest else []
        else:  # quote truncated: every probe to that address shares its fate
            hit = [p for p in self._pending.values() if p.dest == dest]
        reason, text = meaning
        if offender and offender != dest[0]:
            text = f"{text} reported by {offender}"
        now = self._clock()
        for p in hit:
            self._finish(p, ProbeOutcome(at=now, reason=reason, rtt=now - p.sent_at, detail=text))

    def _on_datagram(self, data: bytes, addr: tuple[object, ...]) -> None:
        resp = parse_response(data)
        if resp is None:
            return self._unmatched("garbage")
        p = self._pending.get(resp.via_branch) if resp.via_branch else None
        if p is None or p.future.done():  # done: a duplicate answer, or after the deadline
            late = p is not None or resp.via_branch in self._finished
            return self._unmatched("late" if late else "branch")
        if resp.call_id != p.call_id:
            return self._unmatched("call_id")
        if resp.cseq_num != 1 or resp.cseq_method != "OPTIONS":
            return self._unmatched("cseq")
        if _norm(addr) != p.dest:
            return self._unmatched("source")
        if resp.code < 200:
            p.proceeding = True
            return None
        now = self._clock()
        retry = float(resp.retry_after) if resp.retry_after is not None else None
        self._finish(p, ProbeOutcome(at=now, reason="response", code=resp.code,
                                     phrase=resp.phrase, rtt=now - p.sent_at, retry_after=retry))
        return None

    def _unmatched(self, reason: str) -> None:
        if self._on_unmatched is not None:
            self._on_unmatched(reason)

    def close(self) -> None:
        """Close the sockets; probes still waiting end with outcome send_error."""
        self._closed = True
        for p in list(self._pending.values()):
            self._finish(p, ProbeOutcome(at=self._clock(), reason="send_error",
                                         detail="prober closed"))
        for sock in self._socks.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
