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
import logging
import math
import os
import re
import socket
import struct
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from trunkguard.core.events import Outcome, ProbeOutcome
from trunkguard.sip.message import MAX_MESSAGE, OptionsTemplate, parse_response
from trunkguard.sip.uri import SipUri

log = logging.getLogger(__name__)

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_ERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err, then the offender sockaddr
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
_V4_UNREACH = {
    0: "net unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    6: "net unknown",
    7: "host unknown",
    9: "net prohibited",
    10: "host prohibited",
    13: "administratively prohibited",
}
_V6_UNREACH = {
    0: "no route",
    1: "administratively prohibited",
    3: "address unreachable",
    5: "source address failed policy",
    6: "reject route",
}
_BRANCH_IN_PAYLOAD = re.compile(rb";\s*branch=(z9hG4bK[0-9a-f]+)", re.IGNORECASE)
_BUDGET = 256  # datagrams handled per wake-up, so a flood cannot starve the loop
_RECENT = 16384  # finished branches kept to tell "late" from forged (>1 s at 10k/s)
_ROUTE_TTL = 60.0  # re-learn the local address towards a peer: routes change on failover
_HOSTS = 65536  # IP literals remembered in normalised form
_DESTS = 65536  # prepared destinations (address, socket, message template) remembered
_LANES = 64  # distinct timer delays served by lanes; more get a loop timer each
_RCVBUF = 4 << 20  # bursts of answers from 10k trunks must not overflow the socket
_RTO_GRANULARITY = 0.01  # RFC 6298's G: never closer than this to the smoothed RTT
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}

Addr = tuple[str, int]
OnDone = Callable[[ProbeOutcome], None]


@dataclass(eq=False, slots=True)
class _Probe:
    branch: str
    call_id: str
    dest: Addr
    sock: socket.socket
    message: bytes
    on_done: OnDone
    sent_at: float  # our clock, at the first send: RTTs count from there
    deadline: float  # loop time
    budget: float
    interval: float
    rto: Rto
    resent: bool = False  # a copy went out again: its answer is no RTT sample (Karn)
    proceeding: bool = False  # a 1xx arrived: retransmit every T2 (RFC 3261 17.1.2.2)
    done: bool = False
    next_tx: float = math.inf  # loop time of the next retransmission (Timer E), if any
    # Only when a lane cannot take them (see _Lane): own loop timers.
    deadline_timer: asyncio.TimerHandle | None = None
    tx_timer: asyncio.TimerHandle | None = None


class _Lane:
    """Timers that all fire `delay` seconds after being set, in a FIFO.

    A probe needs two timers (its deadline, and Timer E for retransmissions), and at
    10k probes a second asyncio's heap of TimerHandles costs more than the probe. But
    the delays come from a handful of values (the callers' timeouts; T1, 2*T1 ... T2),
    and entries of one delay arrive in due order, so a deque per delay is a priority
    queue, one loop timer for its head serves them all, and a finished probe's entries
    are skipped when they come up rather than cancelled.
    """

    __slots__ = ("entries", "handle")

    def __init__(self) -> None:
        # (due loop time, branch, is the deadline: else a retransmission)
        self.entries: deque[tuple[float, str, bool]] = deque()
        self.handle: asyncio.TimerHandle | None = None


class Rto:
    """When to send a probe's first retransmission, learnt from the destination's RTT.

    RFC 6298's estimator (SRTT + 4 RTTVAR, Karn: no sample from a retransmitted probe,
    back off on a timeout), rounded up to T1/2^k and kept within [min_t1, T1]. A LAN
    carrier answering in 1 ms is asked again after 62.5 ms (T1 500 ms), so three
    copies fit into a 500 ms deadline and one lost datagram no longer fails the probe;
    a dead one backs off to T1, a single copy per probe. Until the first answer: T1.
    """

    __slots__ = ("rto", "rttvar", "srtt", "steps")

    def __init__(self, t1: float, min_t1: float) -> None:
        self.steps = [t1 / 2**k for k in range(8) if t1 / 2**k >= min_t1] or [t1]
        self.rto = t1
        self.srtt = self.rttvar = -1.0

    def sample(self, rtt: float) -> None:
        if self.srtt < 0:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        want = self.srtt + max(_RTO_GRANULARITY, 4 * self.rttvar)
        rto = self.steps[0]
        for step in self.steps:  # longest first: stop at the shortest one still >= want
            if step < want:
                break
            rto = step
        self.rto = rto

    def timed_out(self) -> None:
        self.rto = min(self.rto * 2, self.steps[0])


@dataclass(eq=False, slots=True)
class _Dest:
    """Everything about a destination that does not change from one probe to the next."""

    addr: Addr
    sock: socket.socket
    template: OptionsTemplate
    expires: float  # our clock: the local address is re-learned then (routes change)
    rto: Rto


def icmp_meaning(origin: int, icmp_type: int, code: int) -> tuple[Outcome, str] | None:
    """(outcome reason, text) for an ICMP error about reachability, else None."""
    if origin == SO_EE_ORIGIN_ICMP:
        if icmp_type == 3 and code == 3:
            return Outcome.REFUSED, "ICMP port unreachable"
        if icmp_type == 3 and code != 4:  # code 4 is PMTU discovery, not reachability
            return Outcome.UNREACHABLE, "ICMP " + _V4_UNREACH.get(
                code, f"unreachable (code {code})"
            )
        if icmp_type == 11:
            return Outcome.UNREACHABLE, "ICMP time exceeded"
    elif origin == SO_EE_ORIGIN_ICMP6:
        if icmp_type == 1 and code == 4:
            return Outcome.REFUSED, "ICMPv6 port unreachable"
        if icmp_type == 1:
            return Outcome.UNREACHABLE, "ICMPv6 " + _V6_UNREACH.get(
                code, f"unreachable (code {code})"
            )
        if icmp_type == 3:
            return Outcome.UNREACHABLE, "ICMPv6 time exceeded"
    return None


def _offender(cmsg: bytes) -> str | None:
    """The address that sent the ICMP error (SO_EE_OFFENDER), maybe a router."""
    raw = cmsg[_EE.size :]
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
        return ProbeOutcome(at=at, reason=Outcome.UNREACHABLE, detail=text)
    if exc.errno == errno.ECONNREFUSED:
        return ProbeOutcome(at=at, reason=Outcome.REFUSED, detail=text)
    return ProbeOutcome(at=at, reason=Outcome.SEND_ERROR, detail=text)


class UdpProber:
    """Sends OPTIONS and matches answers by branch, Call-ID, CSeq and source address.

    send() starts a probe and reports its outcome to a callback, without a task or a
    future per probe; probe() and probe_uri() are the awaitable forms.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        source_address: str | None = None,
        source_port: int = 0,
        t1: float = 0.5,
        t2: float = 4.0,
        min_t1: float | None = None,  # below t1: retransmit sooner, as the RTT allows
        clock: Callable[[], float] = time.monotonic,
        on_unmatched: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 < t1 <= t2:
            raise ValueError(f"need 0 < t1 <= t2, got t1={t1} t2={t2}")
        self._source = str(ipaddress.ip_address(source_address)) if source_address else None
        self._source_port = source_port
        self._user_agent = user_agent
        self._t1, self._t2 = t1, t2
        self._min_t1 = t1 if min_t1 is None else min(max(min_t1, 0.001), t1)
        self._clock = clock
        self._on_unmatched = on_unmatched
        self._socks: dict[int, socket.socket] = {}
        self._ports: dict[int, int] = {}  # family -> our bound port
        self._pending: dict[str, _Probe] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._routes: dict[str, tuple[str, float]] = {}
        self._lanes: dict[float, _Lane] = {}
        self._hosts: dict[str, tuple[str, int]] = {}  # IP literal -> (normalised, family)
        self._dests: dict[tuple[str, int, str, str | None], _Dest] = {}
        self._peers: set[Addr] = set()  # addresses we probe: nothing else is parsed
        self._buf = bytearray(MAX_MESSAGE + 1)
        self._view = memoryview(self._buf)
        self._errq_left: set[socket.socket] = set()  # error queue not emptied last time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # While send() runs, outcomes wait here: on_done is never called from inside send().
        self._sending = False
        self._deferred: list[tuple[OnDone, ProbeOutcome]] = []

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for our sockets (receive buffer full): a flood
        past what we drain. From /proc/net/udp{,6}, matched by socket inode."""
        inodes = {os.fstat(s.fileno()).st_ino for s in self._socks.values()}
        drops = 0
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as f:
                    rows = [line.split() for line in f.readlines()[1:]]
            except OSError:
                continue
            drops += sum(int(r[12]) for r in rows if len(r) > 12 and int(r[9]) in inodes)
        return drops

    # --- the three ways in --------------------------------------------------------------

    def send(
        self,
        host: str,
        port: int,
        *,
        request_uri: str,
        timeout: float,
        on_done: Callable[[ProbeOutcome], None],
        to_uri: str | None = None,
    ) -> None:
        """Start a probe of an IP literal; `on_done(outcome)` follows exactly once.

        on_done runs from the event loop (never from inside send()) once the probe has a
        final response, an ICMP error, a send error, or reaches `timeout` seconds. Network
        conditions never raise; a host that is not an IP literal raises ValueError. Must be
        called from within the running loop.
        """
        loop = self._bind_loop()
        deadline = loop.time() + timeout
        self._start(loop, host, port, request_uri, to_uri, timeout, deadline, on_done)

    # `timeout` is part of the result (a timeout is an outcome, not an exception), so it
    # cannot be an asyncio.timeout() scope around the call (ASYNC109 is off project-wide).
    async def probe(
        self, host: str, port: int, *, request_uri: str, timeout: float, to_uri: str | None = None
    ) -> ProbeOutcome:
        """Probe an IP literal; the outcome arrives by `timeout` seconds at the latest."""
        loop = self._bind_loop()
        deadline = loop.time() + timeout
        return await self._await(loop, host, port, request_uri, to_uri, timeout, deadline)

    async def probe_uri(self, uri: SipUri, *, timeout: float) -> ProbeOutcome:
        """Resolve the URI's host (A/AAAA, first answer) and probe it, all within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if uri.transport != "udp":
            return ProbeOutcome(
                at=self._clock(),
                reason=Outcome.SEND_ERROR,
                detail=f"transport {uri.transport} not supported yet",
            )
        port = uri.port or 5060
        try:
            host = str(ipaddress.ip_address(uri.host))
        except ValueError:
            resolved = await self._resolve(uri.host, port, deadline, timeout)
            if isinstance(resolved, ProbeOutcome):
                return resolved
            host = resolved
        loop = self._bind_loop()
        return await self._await(loop, host, port, str(uri), None, timeout, deadline)

    async def _await(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        request_uri: str,
        to_uri: str | None,
        budget: float,
        deadline: float,
    ) -> ProbeOutcome:
        future: asyncio.Future[ProbeOutcome] = loop.create_future()

        def done(outcome: ProbeOutcome) -> None:
            if not future.done():  # cancelled by our caller
                future.set_result(outcome)

        p = self._start(loop, host, port, request_uri, to_uri, budget, deadline, done)
        try:
            return await future
        finally:
            if p is not None and not p.done:  # cancelled: stop Timer E, forget the probe
                self._retire(p)

    async def _resolve(
        self, name: str, port: int, deadline: float, budget: float
    ) -> str | ProbeOutcome:
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC
        if self._source:
            family = socket.AF_INET6 if ":" in self._source else socket.AF_INET
        try:
            async with asyncio.timeout_at(deadline):
                infos = await loop.getaddrinfo(
                    name, port, family=family, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
                )
        except TimeoutError:
            return ProbeOutcome(
                at=self._clock(),
                reason=Outcome.DNS,
                detail=f"{name}: no answer within {budget * 1000:.0f}ms",
            )
        except (OSError, UnicodeError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return ProbeOutcome(at=self._clock(), reason=Outcome.DNS, detail=f"{name}: {text}")
        if not infos:
            return ProbeOutcome(at=self._clock(), reason=Outcome.DNS, detail=f"{name}: no address")
        return str(infos[0][4][0])

    # --- sending ---------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("UdpProber is closed")
        if self._loop is not None:
            # get_running_loop() costs a getpid() syscall: once is enough, since the
            # sockets are registered with this loop for good.
            return self._loop
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:  # its sockets are registered with the first loop
            raise RuntimeError("a UdpProber serves one event loop")
        return loop

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        request_uri: str,
        to_uri: str | None,
        budget: float,
        deadline: float,
        on_done: OnDone,
    ) -> _Probe | None:
        """Send the first copy and set the probe's timers; None if it ended at once."""
        outer, self._sending = self._sending, True
        try:
            p = self._launch(loop, host, port, request_uri, to_uri, budget, deadline, on_done)
        finally:
            self._sending = outer
            if not outer and self._deferred:
                loop.call_soon(self._deliver_all, self._deferred)
                self._deferred = []
        return p

    def _launch(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        request_uri: str,
        to_uri: str | None,
        budget: float,
        deadline: float,
        on_done: OnDone,
    ) -> _Probe | None:
        now = self._clock()
        dest = self._dests.get((host, port, request_uri, to_uri))
        if dest is None or dest.expires <= now:
            prepared = self._prepare(loop, host, port, request_uri, to_uri, now)
            if isinstance(prepared, ProbeOutcome):
                self._deferred.append((on_done, prepared))
                return None
            dest = prepared
        if loop.time() >= deadline:
            self._deferred.append((on_done, self._timeout_outcome(budget)))
            return None
        branch, call_id, message = dest.template.fresh()
        p = _Probe(
            branch,
            call_id,
            dest.addr,
            dest.sock,
            message,
            on_done,
            sent_at=now,
            deadline=deadline,
            budget=budget,
            interval=dest.rto.rto,
            rto=dest.rto,
        )
        self._pending[branch] = p
        self._transmit(p)
        if not p.done:
            if not self._push(loop, budget, deadline, branch, True):
                p.deadline_timer = loop.call_at(deadline, self._expire, p)
            self._schedule_retransmit(p, loop, loop.time())
        return p

    def _prepare(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        request_uri: str,
        to_uri: str | None,
        now: float,
    ) -> _Dest | ProbeOutcome:
        """Socket, local address and message template for a destination (then cached)."""
        known = self._hosts.get(host)
        if known is None:
            ip = ipaddress.ip_address(host)  # ValueError: callers pass IP literals only
            known = str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if len(self._hosts) >= _HOSTS:
                self._hosts.clear()
            self._hosts[host] = known
        addr, family = (known[0], port), known[1]
        if self._source and (":" in self._source) != (family == socket.AF_INET6):
            return ProbeOutcome(
                at=now,
                reason=Outcome.SEND_ERROR,
                detail=f"source address {self._source} cannot reach {addr[0]}",
            )
        try:
            sock = self._socket(family, loop)
        except OSError as exc:
            return _os_outcome(now, exc, "bind: ")
        try:
            local, expires = self._local_ip(family, addr[0])
        except OSError as exc:
            return _os_outcome(now, exc)
        local_port = self._ports[family]
        me = f"[{local}]" if ":" in local else local
        template = OptionsTemplate(
            request_uri=request_uri,
            via_host=local,
            via_port=local_port,
            from_uri=f"sip:trunkguard@{me}",
            to_uri=to_uri or request_uri,
            cseq=1,
            contact=f"sip:trunkguard@{me}:{local_port}",
            user_agent=self._user_agent,
            call_id_host=me,
        )
        key = (host, port, request_uri, to_uri)
        old = self._dests.get(key)
        rto = old.rto if old is not None else Rto(self._t1, self._min_t1)
        dest = _Dest(addr, sock, template, expires, rto)
        if len(self._peers) >= _DESTS:
            self._peers = {d.addr for d in self._dests.values()}
        self._peers.add(addr)
        if key not in self._dests and len(self._dests) >= _DESTS:
            del self._dests[next(iter(self._dests))]  # the oldest
        self._dests[key] = dest
        return dest

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
            _grow_rcvbuf(sock)
            any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
            sock.bind((self._source or any_addr, self._source_port))
            port = int(sock.getsockname()[1])
        except OSError:
            sock.close()
            raise
        loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._socks[family] = sock
        self._ports[family] = port
        return sock

    def _local_ip(self, family: int, ip: str) -> tuple[str, float]:
        """The source address the kernel picks towards ip (a route lookup; nothing is sent),
        and until when to believe it."""
        if self._source:
            return self._source, math.inf
        now = self._clock()
        cached = self._routes.get(ip)
        if cached and cached[1] > now:
            return cached
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            local = str(s.getsockname()[0]).partition("%")[0]
        if len(self._routes) >= 1024:
            self._routes.clear()
        learned = self._routes[ip] = (local, now + _ROUTE_TTL)
        return learned

    def _transmit(self, p: _Probe) -> None:
        try:
            p.sock.sendto(p.message, p.dest)
            return
        except BlockingIOError:
            return  # send buffer full: like a lost packet, Timer E will resend
        except OSError:
            pass
        # A pending ICMP error (sk_err) may surface here: its detail is on the error
        # queue, which may be about this very probe. Consume it, then try once more.
        self._drain_errors(p.sock)
        if p.done:
            return
        try:
            p.sock.sendto(p.message, p.dest)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(p, _os_outcome(self._clock(), exc))

    # --- timers --------------------------------------------------------------------------

    def _push(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        due: float,
        branch: str,
        is_deadline: bool,
    ) -> bool:
        """Queue a timer in the lane of its delay; False if no lane can take it."""
        lane = self._lanes.get(delay)
        if lane is None:
            if len(self._lanes) >= _LANES:
                return False
            lane = self._lanes[delay] = _Lane()
        entries = lane.entries
        if entries and due < entries[-1][0]:  # out of order (deadline set before an await)
            return False
        entries.append((due, branch, is_deadline))
        if lane.handle is None:
            lane.handle = loop.call_at(due, self._on_lane, lane)
        return True

    def _on_lane(self, lane: _Lane) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        # lane.handle stays set while we work: _push must not re-arm for a later entry
        now = loop.time()
        entries, pending = lane.entries, self._pending
        while entries and entries[0][0] <= now:
            due, branch, is_deadline = entries.popleft()
            p = pending.get(branch)
            if p is None:  # finished already: nothing to cancel, it is just skipped
                continue
            if is_deadline:
                self._timed_out(p)
            elif due == p.next_tx:
                self._retransmit(p, loop, now)
        if self._closed:
            return
        lane.handle = loop.call_at(entries[0][0], self._on_lane, lane) if entries else None

    def _schedule_retransmit(self, p: _Probe, loop: asyncio.AbstractEventLoop, now: float) -> None:
        due = now + p.interval
        if due >= p.deadline:  # the deadline comes first: no more copies
            p.next_tx = math.inf
            return
        p.next_tx = due
        if not self._push(loop, p.interval, due, p.branch, False):
            p.tx_timer = loop.call_at(due, self._on_tx_timer, p)

    def _on_tx_timer(self, p: _Probe) -> None:
        p.tx_timer = None
        if not p.done and self._loop is not None:
            self._retransmit(p, self._loop, self._loop.time())

    def _retransmit(self, p: _Probe, loop: asyncio.AbstractEventLoop, now: float) -> None:
        if now >= p.deadline:  # woken late: the deadline has passed, send nothing more
            self._timed_out(p)
            return
        p.resent = True
        self._transmit(p)
        if not p.done:
            p.interval = self._t2 if p.proceeding else min(p.interval * 2, self._t2)
            self._schedule_retransmit(p, loop, now)

    def _timeout_outcome(self, budget: float) -> ProbeOutcome:
        return ProbeOutcome(
            at=self._clock(), reason=Outcome.TIMEOUT, detail=f"after {budget * 1000:.0f}ms"
        )

    def _expire(self, p: _Probe) -> None:
        p.deadline_timer = None
        self._timed_out(p)

    def _timed_out(self, p: _Probe) -> None:
        if not p.done:
            p.rto.timed_out()
        self._finish(p, self._timeout_outcome(p.budget))

    # --- ending a probe ----------------------------------------------------------------------

    def _retire(self, p: _Probe) -> None:
        """The probe is over: stop its timers and forget it (remembering its branch).

        Its lane entries stay queued: they find no pending probe when they come up.
        """
        p.done = True
        if p.deadline_timer is not None:
            p.deadline_timer.cancel()
            p.deadline_timer = None
        if p.tx_timer is not None:
            p.tx_timer.cancel()
            p.tx_timer = None
        if self._pending.pop(p.branch, None) is not None:
            self._finished[p.branch] = None
            if len(self._finished) > _RECENT:
                self._finished.popitem(last=False)

    def _finish(self, p: _Probe, outcome: ProbeOutcome) -> None:
        if p.done:
            return
        self._retire(p)
        if self._sending:
            self._deferred.append((p.on_done, outcome))
        else:
            _deliver(p.on_done, outcome)

    def _deliver_all(self, batch: list[tuple[OnDone, ProbeOutcome]]) -> None:
        for on_done, outcome in batch:
            _deliver(on_done, outcome)

    # --- receiving ---------------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        # The error queue is read only when there is reason to: an ICMP error sets sk_err,
        # which the next recvfrom (or sendto, see _transmit) reports; a non-empty queue
        # also makes the socket poll EPOLLERR, waking us with nothing to read.
        if self._errq_left and sock in self._errq_left:
            self._drain_errors(sock)
        recv, buf, view, on_datagram = sock.recvfrom_into, self._buf, self._view, self._on_datagram
        for i in range(_BUDGET):
            try:
                n, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                if i == 0:  # woken without data: EPOLLERR
                    self._drain_errors(sock)
                return
            except OSError:  # sk_err reported on read; its detail is on the error queue
                if self._closed:  # by an on_done callback
                    return
                self._drain_errors(sock)
                continue
            on_datagram(bytes(view[:n]), addr)

    def _drain_errors(self, sock: socket.socket) -> None:
        for _ in range(_BUDGET):
            try:
                payload, ancdata, _flags, addr = sock.recvmsg(2048, 1024, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: queue empty
                self._errq_left.discard(sock)
                return
            dest = _norm(addr) if addr else None
            for level, kind, data in ancdata:
                if (level, kind) not in _ERR_CMSGS or len(data) < _EE.size or dest is None:
                    continue
                _errno, origin, icmp_type, code, _pad, _info, _data = _EE.unpack_from(data)
                meaning = icmp_meaning(origin, icmp_type, code)
                if meaning:
                    self._on_icmp(dest, payload, meaning, _offender(data))
        self._errq_left.add(sock)  # more than a budget's worth: finish on the next wake-up

    def _on_icmp(
        self, dest: Addr, payload: bytes, meaning: tuple[Outcome, str], offender: str | None
    ) -> None:
        found = _BRANCH_IN_PAYLOAD.search(payload)
        if found:  # the quoted datagram names the very probe it is about
            p = self._pending.get(found.group(1).decode())
            hit = [p] if p is not None and p.dest == dest else []
        else:
            # The quote stops before the branch (or never was ours): anyone who guessed
            # our port could forge it, so it proves nothing; the deadline decides.
            return self._unmatched("icmp")
        reason, text = meaning
        if offender and offender != dest[0]:
            text = f"{text} reported by {offender}"
        now = self._clock()
        for p in hit:
            self._finish(p, ProbeOutcome(at=now, reason=reason, rtt=now - p.sent_at, detail=text))

    def _on_datagram(self, data: bytes, addr: tuple[object, ...]) -> None:
        # Only a destination we probe can answer: anything else (a flood, a scan) is
        # dropped before the parse, for the price of a set lookup.
        src = (addr[0], addr[1])
        if src not in self._peers and (":" not in str(addr[0]) or _norm(addr) not in self._peers):
            return self._unmatched("source")
        # Every answer needs the full parse: a match needs code, Call-ID and CSeq, and a
        # mismatch's reason ("garbage" or not) depends on whether it parses at all.
        resp = parse_response(data)
        if resp is None:
            return self._unmatched("garbage")
        branch = resp.via_branch
        p = self._pending.get(branch) if branch else None
        if p is None:  # finished probes leave _pending at once: duplicates, after deadline
            return self._unmatched("late" if branch in self._finished else "branch")
        if resp.call_id != p.call_id:
            return self._unmatched("call_id")
        if resp.cseq_num != 1 or resp.cseq_method != "OPTIONS":
            return self._unmatched("cseq")
        dest = p.dest
        if (addr[0] != dest[0] or addr[1] != dest[1]) and _norm(addr) != dest:
            return self._unmatched("source")  # the raw tuple usually equals dest already
        if resp.code < 200:
            p.proceeding = True
            return None
        now = self._clock()
        if not p.resent:
            p.rto.sample(now - p.sent_at)
        retry = float(resp.retry_after) if resp.retry_after is not None else None
        self._finish(
            p,
            ProbeOutcome(
                at=now,
                reason=Outcome.RESPONSE,
                code=resp.code,
                phrase=resp.phrase,
                rtt=now - p.sent_at,
                retry_after=retry,
            ),
        )
        return None

    def _unmatched(self, reason: str) -> None:
        if self._on_unmatched is not None:
            self._on_unmatched(reason)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sockets; every probe still running ends with send_error "prober closed"."""
        self._closed = True
        for p in list(self._pending.values()):
            self._finish(
                p, ProbeOutcome(at=self._clock(), reason=Outcome.SEND_ERROR, detail="prober closed")
            )
        for sock in self._socks.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        self._dests.clear()
        for lane in self._lanes.values():
            if lane.handle is not None:
                lane.handle.cancel()
        self._lanes.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _grow_rcvbuf(sock: socket.socket) -> None:
    """Room for answer bursts: SO_RCVBUFFORCE (CAP_NET_ADMIN) ignores rmem_max."""
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _RCVBUF)
            return
        except OSError:
            continue


def _deliver(on_done: OnDone, outcome: ProbeOutcome) -> None:
    try:
        on_done(outcome)
    except Exception:  # a caller's bug must not break the reader or the timers
        log.exception("UdpProber on_done callback failed for outcome %s", outcome.reason)
