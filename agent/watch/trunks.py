"""Trunk watcher: resolve each trunk (RFC 3263) and probe every destination on its own clock.

An input only: it reports each probe's outcome and verdict, and what each trunk
resolves to; the core decides. The schedule comes from the core's health machine
for that destination (interval while stable, fast_interval while a change is
pending, never before a Retry-After hold-down ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.core.classify import OkCodes, classify
from agent.core.events import ProbeOutcome, Verdict
from agent.core.trunk import TrunkHealth
from agent.sip.dns import Destination, DnsError, SipResolver
from agent.sip.prober import UdpProber
from agent.sip.stream import StreamProber, TlsSettings
from agent.sip.uri import SipUri, parse_uri

DNS_KEY = "dns"  # the destination a trunk has while its name does not resolve
Source = tuple[str | None, int]


@dataclass(frozen=True)
class TrunkPlan:
    name: str
    target: str
    uri: SipUri
    timeout: float
    interval: float
    ok_codes: OkCodes
    retry_after_cap: float
    tls: TlsSettings | None
    source: Source


def plans(cfg: Config) -> list[TrunkPlan]:
    out = []
    for name, t in cfg.trunks.items():
        p = cfg.probe_for(name)
        tls = cfg.tls_for(name)
        out.append(
            TrunkPlan(
                name=name,
                target=f"trunk:{name}",
                uri=parse_uri(t.uri),
                timeout=p.timeout,
                interval=p.interval,
                ok_codes=OkCodes.parse(p.ok_codes),
                retry_after_cap=p.retry_after_cap,
                tls=None
                if tls is None
                else TlsSettings(
                    tls.ca_file, tls.cert_file, tls.key_file, tls.server_name, tls.verify
                ),
                source=(
                    t.source_address or cfg.sip.source_address,
                    t.source_port if t.source_port is not None else cfg.sip.source_port,
                ),
            )
        )
    return out


ResultSink = Callable[[TrunkPlan, str, ProbeOutcome, Verdict], None]
DestSink = Callable[[str, list[str]], None]


class TrunkWatcher:
    def __init__(
        self,
        cfg: Config,
        *,
        health: Callable[[str], TrunkHealth | None],
        on_result: ResultSink,
        on_dests: DestSink,
        on_unmatched: Callable[[str], None],
        on_transport_event: Callable[[str, str, str], None],
        log: Any,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.health = health
        self.on_result = on_result
        self.on_dests = on_dests
        self.log = log
        self.clock = clock
        self._on_unmatched = on_unmatched
        self._on_transport_event = on_transport_event
        dns = cfg.sip.dns
        self.resolver = SipResolver(
            nameservers=dns.nameservers or None,
            port=dns.port,
            timeout=dns.timeout,
            min_ttl=dns.min_ttl,
            max_ttl=dns.max_ttl,
            clock=clock,
        )
        self._udp: dict[Source, UdpProber] = {}
        self._stream: dict[Source, StreamProber] = {}
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self._dns_error: dict[str, str] = {}

    def udp(self, source: Source) -> UdpProber:
        p = self._udp.get(source)
        if p is None:
            p = self._udp[source] = UdpProber(
                user_agent=self.cfg.sip.user_agent,
                source_address=source[0],
                source_port=source[1],
                t1=self.cfg.sip.t1,
                clock=self.clock,
                on_unmatched=self._on_unmatched,
            )
        return p

    def stream(self, source: Source) -> StreamProber:
        p = self._stream.get(source)
        if p is None:
            p = self._stream[source] = StreamProber(
                user_agent=self.cfg.sip.user_agent,
                source_address=source[0],
                source_port=source[1],
                clock=self.clock,
                on_unmatched=self._on_unmatched,
                on_transport_event=self._on_transport_event,
            )
        return p

    def close(self) -> None:
        for u in self._udp.values():
            u.close()
        for s in self._stream.values():
            s.close()

    async def run(self, supervise: Callable[..., Any]) -> None:
        async with asyncio.TaskGroup() as tg:
            for plan in plans(self.cfg):
                tg.create_task(supervise(f"trunk {plan.name}", lambda p=plan: self._trunk(p)))

    async def _trunk(self, plan: TrunkPlan) -> None:
        """Re-resolve when the answer expires; keep one probe loop per destination."""
        loops: dict[str, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as tg:
            while True:
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
                if set(dests) != set(loops):
                    self.on_dests(plan.target, list(dests))
                    for key in set(loops) - set(dests):
                        loops.pop(key).cancel()
                    for key in dests.keys() - loops.keys():
                        loops[key] = tg.create_task(self._dest(plan, key, dests[key]))
                if math.isinf(expires):
                    await asyncio.Event().wait()  # an IP literal never changes
                await asyncio.sleep(max(expires - self.clock(), 1.0))

    async def _dest(self, plan: TrunkPlan, key: str, dest: Destination | None) -> None:
        wake = self._wake.setdefault((plan.target, key), asyncio.Event())
        last_start = -math.inf
        async with asyncio.TaskGroup() as probes:
            while True:
                wake.clear()
                th = self.health(plan.target)
                if th is None:
                    return
                due = max(last_start + th.next_delay(key), th.not_before(key) or 0.0)
                now = self.clock()
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(due - now):
                            await wake.wait()
                    continue
                last_start = now
                # Probes may overlap: in fast re-probe the next one starts before the
                # previous deadline, which keeps detection near the documented bound.
                probes.create_task(self._probe(plan, key, dest, wake))

    async def _probe(
        self, plan: TrunkPlan, key: str, dest: Destination | None, wake: asyncio.Event
    ) -> None:
        try:
            outcome = await self._send(plan, dest)
        except Exception as e:  # a prober bug must not kill the loop; it is a failure
            self.log.exception("probe crashed", trunk=plan.name, dest=key)
            outcome = ProbeOutcome(self.clock(), "send_error", detail=str(e))
        verdict = classify(
            outcome,
            target=plan.target,
            ok_codes=plan.ok_codes,
            retry_after_cap=plan.retry_after_cap,
        )
        self.on_result(plan, key, outcome, verdict)
        wake.set()

    async def _send(self, plan: TrunkPlan, dest: Destination | None) -> ProbeOutcome:
        if dest is None:
            return ProbeOutcome(self.clock(), "dns", detail=self._dns_error.get(plan.target, ""))
        if dest.transport == "udp":
            return await self.udp(plan.source).probe(
                dest.host, dest.port, request_uri=str(plan.uri), timeout=plan.timeout
            )
        tls = plan.tls
        return await self.stream(plan.source).probe(
            dest.host,
            dest.port,
            transport=dest.transport,
            request_uri=str(plan.uri),
            timeout=plan.timeout,
            server_name=(tls.server_name if tls and tls.server_name else dest.server_name),
            tls=tls,
        )
