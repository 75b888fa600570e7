"""Trunks: SIP OPTIONS probing of each trunk (sections `probe`, `sip`, `trunks`).

Each trunk is resolved (RFC 3263) and every destination probed on its own clock by
the trunk watcher; each outcome is counted here and handed to the hub as a verdict.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from trunkguard import __version__
from trunkguard.core.classify import OkCodes
from trunkguard.core.engine import CoreSpec, TrunkSpec
from trunkguard.core.events import Outcome, ProbeOutcome, Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import Kind, TargetId, trunk
from trunkguard.core.trunk import Quorum
from trunkguard.features.base import Context, Feature, Parts, Task
from trunkguard.obs.metrics import Metrics
from trunkguard.schema import Duration, IpAddress, Lines, Loc, Strict, TargetRef
from trunkguard.sip.dns import SipResolver
from trunkguard.sip.stream import TlsSettings
from trunkguard.sip.uri import parse_uri
from trunkguard.watch.trunks import TrunkPlan, TrunkWatcher

if TYPE_CHECKING:
    from trunkguard.config import Config


DROPS_EVERY = 5.0  # seconds between reads of the kernel's drop counters


def _check_ok_codes(v: list[str | int]) -> list[str | int]:
    OkCodes.parse(v)
    return v


OkCodeList = Annotated[list[str | int], AfterValidator(_check_ok_codes)]


class ProbeSettings(Strict):
    interval: Duration = 1.0
    fast_interval: Duration = 0.2
    timeout: Duration = 0.5
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)
    ok_codes: OkCodeList = ["2xx"]
    retry_after_cap: Duration = 300.0

    @model_validator(mode="after")
    def _fast_not_slower(self) -> ProbeSettings:
        if self.fast_interval > self.interval:
            raise ValueError("fast_interval must not be longer than interval")
        return self

    def health(self) -> HealthParams:
        return HealthParams(self.interval, self.fast_interval, self.rise, self.fall)


class ProbeOverrides(Strict):
    interval: Duration | None = None
    fast_interval: Duration | None = None
    timeout: Duration | None = None
    rise: int | None = Field(None, ge=1, le=100)
    fall: int | None = Field(None, ge=1, le=100)
    ok_codes: OkCodeList | None = None
    retry_after_cap: Duration | None = None


class TlsConfig(Strict):
    """TLS towards a trunk: system CA store unless ca_file; client cert for mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # SNI and certificate name, default: the URI's host
    verify: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self

    def files(self) -> list[tuple[str, str]]:
        return [(k, v) for k in ("ca_file", "cert_file", "key_file") if (v := getattr(self, k))]

    def settings(self) -> TlsSettings:
        return TlsSettings(
            self.ca_file, self.cert_file, self.key_file, self.server_name, self.verify
        )


class TrunkConfig(ProbeOverrides):
    uri: str
    description: str = ""
    healthy_when: Literal["any", "all"] | Annotated[int, Field(strict=True, ge=1)] = "any"
    source_address: IpAddress | None = None
    source_port: int | None = Field(None, ge=0, le=65535)
    tls: TlsConfig | None = None
    depends_on: list[TargetRef] = []  # links the trunk is reached through: [link:uplink-a]
    # What a drill takes out: `trunkguard drill carrier` a carrier's trunk, `drill
    # platform` the SBC/PBX a path requires (a trunk probing it with role: platform).
    role: Literal["carrier", "platform"] = "carrier"

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        uri = parse_uri(v)
        if uri.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport {uri.transport} is not supported (udp, tcp or tls)")
        return v

    @model_validator(mode="after")
    def _tls_needs_tls(self) -> TrunkConfig:
        if self.tls is not None and parse_uri(self.uri).transport != "tls":
            raise ValueError("tls settings need a sips: URI or ;transport=tls")
        return self


class DnsSettings(Strict):
    nameservers: list[IpAddress] = []  # empty: the system's resolv.conf
    port: int = Field(53, ge=1, le=65535)
    timeout: Duration = 2.0
    min_ttl: Duration = 5.0
    max_ttl: Duration = 3600.0


class SipSettings(Strict):
    source_address: IpAddress | None = None
    source_port: int = Field(0, ge=0, le=65535)
    user_agent: str = f"trunkguard/{__version__}"
    t1: Duration = 0.5
    # UDP: retransmit after the measured RTT allows (RFC 6298), no sooner than this;
    # min_t1 = t1 keeps RFC 3261's fixed Timer E.
    min_t1: Duration = 0.05
    tls: TlsConfig | None = None  # default for TLS trunks without their own
    dns: DnsSettings = Field(default_factory=DnsSettings)


def probe_for(cfg: Config, name: str) -> ProbeSettings:
    """A trunk's effective probe settings: its overrides over the global defaults."""
    dumped = cfg.trunks[name].model_dump(include=set(ProbeOverrides.model_fields))
    return cfg.probe.model_copy(update={k: v for k, v in dumped.items() if v is not None})


def plans(cfg: Config) -> list[TrunkPlan]:
    out = []
    for name, t in cfg.trunks.items():
        p = probe_for(cfg, name)
        tls = t.tls or cfg.sip.tls
        source = t.source_address or cfg.sip.source_address
        port = t.source_port if t.source_port is not None else cfg.sip.source_port
        uri = parse_uri(t.uri)
        out.append(
            TrunkPlan(
                name=name,
                target=trunk(name),
                uri=uri,
                timeout=p.timeout,
                interval=p.interval,
                ok_codes=OkCodes.parse(p.ok_codes),
                retry_after_cap=p.retry_after_cap,
                tls=None if tls is None else tls.settings(),
                source=(source, port),
                request_uri=str(uri),
            )
        )
    return out


class _ProbeMetrics:
    """Metric children of one (trunk, destination), looked up once instead of per probe."""

    __slots__ = ("_failures", "_m", "_responses", "dest", "rtt", "trunk")

    def __init__(self, m: Metrics, trunk: str, dest: str) -> None:
        self._m, self.trunk, self.dest = m, trunk, dest
        self.rtt = m.sip_options_rtt_seconds.labels(trunk, dest)
        self._responses: dict[int, Any] = {}
        self._failures: dict[str, Any] = {}

    def count(self, outcome: ProbeOutcome, ok: bool) -> None:
        if outcome.reason == Outcome.RESPONSE and outcome.code is not None:
            c = self._responses.get(outcome.code)
            if c is None:
                c = self._responses[outcome.code] = self._m.sip_options_responses_total.labels(
                    self.trunk, self.dest, str(outcome.code)
                )
            c.inc()
            if outcome.rtt is not None:
                self.rtt.observe(outcome.rtt)
        if not ok:
            reason = "status" if outcome.reason == Outcome.RESPONSE else outcome.reason.value
            f = self._failures.get(reason)
            if f is None:
                f = self._failures[reason] = self._m.probe_failures_total.labels(self.trunk, reason)
            f.inc()


class Trunks(Feature):
    name = "trunks"

    def __init__(self) -> None:
        self._probe_metrics: dict[tuple[str, str], _ProbeMetrics] = {}  # kept across reloads

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        for name, t in cfg.trunks.items():
            for j, dep in enumerate(t.depends_on):
                if dep.kind is not Kind.LINK or dep.name not in cfg.links:
                    msg = f"unknown link {str(dep)!r} (write link:NAME, one of the links section)"
                    problems.append(lines.problem(("trunks", name, "depends_on", j), msg))
            eff = probe_for(cfg, name)
            if eff.fast_interval > eff.interval:
                fast, interval = eff.fast_interval, eff.interval
                msg = f"fast_interval {fast:g}s is longer than interval {interval:g}s"
                problems.append(lines.problem(("trunks", name), msg))
        places: list[tuple[Loc, TlsConfig]] = [
            (("trunks", n, "tls"), t.tls) for n, t in cfg.trunks.items() if t.tls
        ]
        if cfg.sip.tls:
            places.append((("sip", "tls"), cfg.sip.tls))
        for where, tls in places:
            for fname, path in tls.files():
                if not Path(path).is_file():
                    problems.append(lines.problem((*where, fname), f"cannot read {path}"))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        for name, t in cfg.trunks.items():
            spec.trunks[trunk(name)] = TrunkSpec(
                probe_for(cfg, name).health(),
                Quorum.parse(t.healthy_when),
                tuple(t.depends_on),
            )

    def build(self, ctx: Context) -> Parts:
        sip, hub, m = ctx.cfg.sip, ctx.hub, ctx.metrics

        def on_result(plan: TrunkPlan, dest: str, outcome: ProbeOutcome, v: Verdict) -> None:
            pm = self._probe_metrics.get((plan.name, dest))
            if pm is None:
                pm = self._probe_metrics[(plan.name, dest)] = _ProbeMetrics(m, plan.name, dest)
            pm.count(outcome, v.ok)
            hub.probed(plan.target, dest, outcome, v)

        def on_dests(target: TargetId, dests: list[str]) -> None:
            th = hub.engine.targets.get(target)
            if th is not None and set(th.dests) != set(dests):
                ctx.log.info("destinations", target=str(target), dests=dests)
            hub.dests(target, dests)

        def on_transport(key: str, kind: str, detail: str) -> None:
            # The stream prober reports a transport problem once per change, not per probe.
            ctx.log.warning("transport problem", connection=key, kind=kind, detail=detail)

        watcher = TrunkWatcher(
            plans(ctx.cfg),
            resolver=SipResolver(
                nameservers=sip.dns.nameservers or None,
                port=sip.dns.port,
                timeout=sip.dns.timeout,
                min_ttl=sip.dns.min_ttl,
                max_ttl=sip.dns.max_ttl,
                clock=hub.clock,
            ),
            user_agent=sip.user_agent,
            t1=sip.t1,
            min_t1=sip.min_t1,
            health=hub.engine.targets.get,
            on_result=on_result,
            on_dests=on_dests,
            on_unmatched=lambda reason: m.sip_unmatched_responses_total.labels(reason).inc(),
            on_transport_event=on_transport,
            log=ctx.log,
            clock=hub.clock,
        )

        async def count_drops() -> None:
            # Polled: the kernel counts them per socket, we only learn when we ask.
            last = 0
            while True:
                await asyncio.sleep(DROPS_EVERY)
                now = watcher.kernel_drops()
                if now > last:
                    m.sip_socket_drops_total.inc(now - last)
                last = now

        tasks: list[Task] = [("trunks", watcher.run), ("socket drops", count_drops)]
        return Parts(tasks=tasks, close=[watcher.close])


FEATURE = Trunks()
