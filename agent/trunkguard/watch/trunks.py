"""Trunk watcher: resolve each trunk (RFC 3263) and probe every destination on its own clock.

An input only: it reports each probe's outcome and verdict, and what each trunk
resolves to; the core decides. The schedule comes from the core's health machine
for that destination (interval while stable, fast_interval while a change is
pending, never before a Retry-After hold-down ends).
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from trunkguard.core.classify import OkCodes, classify
from trunkguard.core.events import Outcome, ProbeOutcome, Verdict
from trunkguard.core.ids import TargetId
from trunkguard.core.trunk import TrunkHealth
from trunkguard.sip.dns import Destination, DnsError, SipResolver
from trunkguard.sip.prober import UdpProber
from trunkguard.sip.stream import StreamProber, TlsSettings
from trunkguard.sip.uri import SipUri
from trunkguard.tasks import supervise

DNS_KEY = "dns"  # the destination a trunk has while its name does not resolve
# Probes started per timer callback. The loop reads answers once per iteration, so one
# huge batch of sends would starve the reader and let answers overflow the socket.
_FIRE_BATCH = 128
Source = tuple[str | None, int]


@dataclass(frozen=True)
class TrunkPlan:
    name: str
    target: TargetId
    uri: SipUri
    timeout: float
    interval: float
    ok_codes: OkCodes
    retry_after_cap: float
    tls: TlsSettings | None
    source: Source
    request_uri: str = ""


@dataclass(eq=False, slots=True)
class _Dest:
    """One resolved destination of a trunk and its place in the probe schedule."""

    plan: TrunkPlan
    key: str
    dest: Destination | None  # None: the name does not resolve
    last_start: float = -math.inf
    due: float = math.inf  # when its live heap entry fires
    live: bool = True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


ResultSink = Callable[[TrunkPlan, str, ProbeOutcome, Verdict], None]
DestSink = Callable[[TargetId, list[str]], None]


class TrunkWatcher:
    def __init__(
        self,
        plans: list[TrunkPlan],
        *,
        resolver: SipResolver,
        user_agent: str,
        t1: float,
        min_t1: float,
        health: Callable[[TargetId], TrunkHealth | None],
        on_result: ResultSink,
        on_dests: DestSink,
        on_unmatched: Callable[[str], None],
        on_transport_event: Callable[[str, str, str], None],
        log: Any,
        clock: Callable[[], float],
    ) -> None:
        self.plans = plans
        self.user_agent, self.t1, self.min_t1 = user_agent, t1, min_t1
        self.resolver = resolver
        self.health = health
        self.on_result = on_result
        self.on_dests = on_dests
        self.log = log
        self.clock = clock
        self._on_unmatched = on_unmatched
        self._on_transport_event = on_transport_event
        self._udp: dict[Source, UdpProber] = {}
        self._stream: dict[Source, StreamProber] = {}
        self._dns_error: dict[TargetId, str] = {}
        self._expires: dict[TargetId, float] = {}
        self._dests: dict[TargetId, dict[str, _Dest]] = {}
        self._heap: list[tuple[float, int, _Dest]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Future[ProbeOutcome]] = set()

    def udp(self, source: Source) -> UdpProber:
        p = self._udp.get(source)
        if p is None:
            p = self._udp[source] = UdpProber(
                user_agent=self.user_agent,
                source_address=source[0],
                source_port=source[1],
                t1=self.t1,
                min_t1=self.min_t1,
                clock=self.clock,
                on_unmatched=self._on_unmatched,
            )
        return p

    def stream(self, source: Source) -> StreamProber:
        p = self._stream.get(source)
        if p is None:
            p = self._stream[source] = StreamProber(
                user_agent=self.user_agent,
                source_address=source[0],
                source_port=source[1],
                clock=self.clock,
                on_unmatched=self._on_unmatched,
                on_transport_event=self._on_transport_event,
            )
        return p

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for the UDP probe sockets (buffer full)."""
        return sum(p.kernel_drops() for p in self._udp.values())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for d in (d for dests in self._dests.values() for d in dests.values()):
            d.live = False
        for t in self._inflight:
            t.cancel()
        for u in self._udp.values():
            u.close()
        for s in self._stream.values():
            s.close()

    async def run(self) -> None:
        """Resolve every trunk, then probe; only DNS-named trunks keep a task (re-resolving)."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            for plan in self.plans:
                if _is_ip(plan.uri.host):
                    await self._resolve(plan)  # no DNS: immediate, and never again
                else:
                    loop = partial(self._dns_loop, plan)
                    tg.create_task(supervise(f"dns {plan.name}", loop, self.log))
            await asyncio.Event().wait()  # the heap and the DNS loops do the work

    async def _dns_loop(self, plan: TrunkPlan) -> None:
        while True:
            await self._resolve(plan)
            await asyncio.sleep(max(self._expires[plan.target] - self.clock(), 1.0))

    async def _resolve(self, plan: TrunkPlan) -> float:
        """Resolve a trunk now and adjust its destinations; returns when to do it again."""
        try:
            res = await self.resolver.resolve(plan.uri)
            dests: dict[str, Destination | None] = {d.key: d for d in res.destinations}
            if self._dns_error.pop(plan.target, None):
                self.log.info("name resolves again", trunk=plan.name, dests=list(dests))
            expires = res.expires_at
        except DnsError as e:
            # Never "still up" on stale data: the trunk gets one failing destination.
            if self._dns_error.get(plan.target) != str(e):
                self.log.warning("name does not resolve", trunk=plan.name, error=str(e))
            self._dns_error[plan.target] = str(e)
            dests, expires = {DNS_KEY: None}, self.clock() + plan.interval
        self._expires[plan.target] = expires
        have = self._dests.setdefault(plan.target, {})
        if set(dests) != set(have):
            self.on_dests(plan.target, list(dests))
            for key in set(have) - set(dests):
                have.pop(key).live = False
            now = self.clock()
            for key in dests.keys() - have.keys():
                d = have[key] = _Dest(plan, key, dests[key])
                # Spread first probes over the interval: 10,000 trunks probed in phase
                # would answer in one burst and overflow the socket's receive buffer.
                self._schedule(d, now + random.uniform(0, plan.interval))  # noqa: S311
        return expires

    # ---- one timer heap for every destination --------------------------------------

    def _schedule(self, d: _Dest, due: float) -> None:
        """Make d due at `due` unless it is already due sooner."""
        if not d.live or due >= d.due:
            return
        d.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, d))
        if self._timer is None or due < self._timer_due:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_due = due
        self._timer = self._loop.call_at(self._loop.time() + (due - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock()
        heap = self._heap
        budget = _FIRE_BATCH
        while heap and heap[0][0] <= now and budget:
            budget -= 1
            due, _, d = heapq.heappop(heap)
            if not d.live or due != d.due:
                continue  # superseded by an earlier reschedule, or removed by DNS
            d.due = math.inf
            d.last_start = now
            try:
                self._start(d)
            except Exception:  # keep the schedule alive whatever one start does
                self.log.exception("probe start failed", trunk=d.plan.name, dest=d.key)
            self._reschedule(d, now)
        if heap:
            self._arm(heap[0][0])

    def _reschedule(self, d: _Dest, now: float) -> None:
        th = self.health(d.plan.target)
        if th is None:
            d.live = False
            return
        # Probes may overlap: in fast re-probe the next one starts before the previous
        # deadline, which keeps detection near the documented bound.
        due = max(d.last_start + th.next_delay(d.key), th.not_before(d.key) or 0.0, now)
        self._schedule(d, due)

    def _start(self, d: _Dest) -> None:
        if d.dest is None:
            outcome = ProbeOutcome(
                self.clock(), Outcome.DNS, detail=self._dns_error.get(d.plan.target, "")
            )
            self._loop.call_soon(self._done, d, outcome)  # type: ignore[union-attr]
            return
        if d.dest.transport == "udp":  # the common case: a callback, no task per probe
            self.udp(d.plan.source).send(
                d.dest.host,
                d.dest.port,
                request_uri=d.plan.request_uri,
                timeout=d.plan.timeout,
                on_done=partial(self._done, d),
            )
            return
        task = asyncio.ensure_future(self._send_stream(d.plan, d.dest))
        self._inflight.add(task)
        task.add_done_callback(partial(self._task_done, d))

    def _task_done(self, d: _Dest, task: asyncio.Future[ProbeOutcome]) -> None:
        self._inflight.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a prober bug must not stop probing; it is a failure
            self.log.error("probe crashed", trunk=d.plan.name, dest=d.key, error=repr(exc))
            self._done(d, ProbeOutcome(self.clock(), Outcome.SEND_ERROR, detail=str(exc)))
        else:
            self._done(d, task.result())

    def _done(self, d: _Dest, outcome: ProbeOutcome) -> None:
        plan = d.plan
        verdict = classify(
            outcome,
            target=plan.target,
            ok_codes=plan.ok_codes,
            retry_after_cap=plan.retry_after_cap,
        )
        if d.live:
            self.on_result(plan, d.key, outcome, verdict)
            self._reschedule(d, self.clock())  # a pending change probes sooner

    async def _send_stream(self, plan: TrunkPlan, dest: Destination) -> ProbeOutcome:
        tls = plan.tls
        return await self.stream(plan.source).probe(
            dest.host,
            dest.port,
            transport=dest.transport,
            request_uri=plan.request_uri,
            timeout=plan.timeout,
            server_name=(tls.server_name if tls and tls.server_name else dest.server_name),
            tls=tls,
        )
