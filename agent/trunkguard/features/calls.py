"""Synthetic calls (section `calls`): a real call with media through a path, on a
schedule, as a target `call:<name>` with its own rise/fall health.

OPTIONS say a carrier answers; a call check says it carries calls: answered within a
deadline, RTP both ways, loss and jitter within limits, and (for an echoing far end)
our tone back. A path can name the check that proves it (`verified_by`); a backup
whose trunks answer OPTIONS while its call check fails is the silent-backup alarm
(trunkguard_path_silent_failure). Needs the `calls` extra (pjsua2); each call runs in
its own child process with a hard deadline, one call at a time per agent.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator
from structlog.typing import FilteringBoundLogger

from trunkguard.act.base import ActuatorError
from trunkguard.act.kamailio import parse_rpc, rpc
from trunkguard.calls.check import CallResult, place
from trunkguard.core.engine import CoreSpec, TrunkSpec
from trunkguard.core.events import Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import Kind, TargetId
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.hub import Hub
from trunkguard.obs.metrics import Metrics
from trunkguard.schema import Duration, IpAddress, Lines, Strict

if TYPE_CHECKING:
    from trunkguard.config import Config


class CapacityConfig(Strict):
    """Channels kept for real calls: a check is not placed when it would take one."""

    kamailio: str  # its JSON-RPC (as actuators.kamailio.rpc), counting dialogs in progress
    channels: int = Field(ge=1)  # what the trunk or platform carries at once
    keep_free: int = Field(1, ge=0)  # channels a check never takes
    timeout: Duration = 1.0

    @field_validator("kamailio")
    @classmethod
    def _rpc(cls, v: str) -> str:
        parse_rpc(v)
        return v

    @model_validator(mode="after")
    def _valid(self) -> CapacityConfig:
        if self.keep_free >= self.channels:
            raise ValueError(f"keep_free {self.keep_free} leaves none of {self.channels} channels")
        return self

    async def busy(self) -> str | None:
        """Why a check must not be placed now, or None. Unknown counts as busy."""
        try:
            stats = await rpc(
                parse_rpc(self.kamailio), "dlg.stats_active", [], self.timeout, "capacity"
            )
            n = int(stats["all"])
        except ActuatorError as e:
            return f"cannot count the calls in progress: {e}"
        except (KeyError, TypeError, ValueError):
            return "cannot count the calls in progress: dlg.stats_active has no count"
        if n + 1 > self.channels - self.keep_free:
            return f"{n} of {self.channels} channels in use, {self.keep_free} kept for real calls"
        return None


class CallConfig(Strict):
    uri: str  # where to call: sip:echo@carrier-b or a remote site's test number
    every: Duration = 900.0  # one check every 15 minutes
    answer_within: Duration = 5.0
    duration: Duration = 3.0  # how long the tone plays once answered
    timeout: Duration | None = None  # the child's hard deadline; default answer + duration + 5s
    max_loss: float = Field(0.05, ge=0, le=1)
    max_jitter: Duration = 0.05
    tone: bool = False  # require our tone back (for far ends that echo)
    transport: Literal["udp", "tcp"] = "udp"  # the wheel's OpenSSL 1.0.2 is not used for TLS
    bind: IpAddress | None = None
    rise: int = Field(1, ge=1, le=10)
    fall: int = Field(1, ge=1, le=10)
    # A path this check proves is "unverified" (status, MQTT alarms, an alert) once its
    # last passing call is older than this; counted from the agent's start until then.
    max_age: Duration = 86400.0
    capacity: CapacityConfig | None = None

    @model_validator(mode="after")
    def _uri(self) -> CallConfig:
        if not self.uri.startswith("sip:") or any(c in self.uri for c in ' \r\n<>"'):
            raise ValueError(f"uri must be a sip: URI without spaces or brackets: {self.uri!r}")
        return self

    def deadline(self) -> float:
        return self.timeout or self.answer_within + self.duration + 5.0

    def spec(self) -> dict[str, Any]:
        """What the child process is told (nothing else crosses)."""
        out: dict[str, Any] = {
            "uri": self.uri,
            "answer_within": self.answer_within,
            "duration": self.duration,
            "transport": self.transport,
        }
        if self.bind:
            out["bind"] = self.bind
        return out

    def judge(self, r: CallResult) -> tuple[bool, str]:
        """The check's verdict on a call: media both ways within the limits."""
        if not r.ok:
            return False, r.reason
        if r.loss_ratio is not None and r.loss_ratio > self.max_loss:
            return False, f"RTP loss {r.loss_ratio:.1%} > {self.max_loss:.1%}"
        if r.jitter_s is not None and r.jitter_s > self.max_jitter:
            return False, f"jitter {r.jitter_s * 1000:.1f} ms > {self.max_jitter * 1000:g} ms"
        if self.tone and (r.tone_back or 0.0) < 0.5:
            return False, "answered with media, but our tone did not come back"
        pdd = "" if r.answered_s is None else f", answered in {r.answered_s * 1000:.0f} ms"
        return True, f"{r.reason}{pdd}"


def call(name: str) -> TargetId:
    return TargetId(Kind.CALL, name)


class Calls(Feature):
    name = "calls"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        known = cfg.targets()
        for gname, g in cfg.routes.items():
            for i, p in enumerate(g.paths):
                v = p.verified_by
                if v is not None and (v.kind is not Kind.CALL or v not in known):
                    loc = ("routes", gname, "paths", i, "verified_by")
                    problems.append(lines.problem(loc, f"needs a configured call check, got {v}"))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        for name, c in cfg.calls.items():
            params = HealthParams(c.every, c.every, c.rise, c.fall)
            spec.trunks[call(name)] = TrunkSpec(params)

    def build(self, ctx: Context) -> Parts:
        if not ctx.cfg.calls or ctx.caller is None:
            return Parts()
        m, hub, wall = ctx.metrics, ctx.hub, time.time() - ctx.hub.clock()
        for name, c in ctx.cfg.calls.items():
            # Unproven counts from when the check was first configured (a reload keeps it).
            passed = hub.passed.setdefault(call(name), hub.clock())
            m.call_last_success.labels(name).set(passed + wall)
            m.call_max_age.labels(name).set(c.max_age)
        caller = ctx.caller
        return Parts(
            tasks=[(f"call {n}", partial(_every, caller, n, c)) for n, c in ctx.cfg.calls.items()]
        )


async def _every(caller: Caller, name: str, cfg: CallConfig) -> None:
    while True:
        await caller.check(name, cfg)
        await asyncio.sleep(cfg.every)


class Caller:
    """Places call checks one at a time (pjsua2 children compete for the CPU) and reports
    each one like any check: metrics, log and a verdict to the hub. Long-lived: the
    schedule and the drills share it."""

    def __init__(self, hub: Hub, metrics: Metrics, log: FilteringBoundLogger) -> None:
        self.hub, self.metrics, self.log = hub, metrics, log
        self.lock = asyncio.Lock()

    async def check(
        self, name: str, cfg: CallConfig, by: str = "schedule"
    ) -> tuple[bool, str, CallResult | None]:
        """Place the call (unless it would take a channel kept for real calls: then no
        call and no verdict) and report it; (ok, reason, the call's result)."""
        m = self.metrics
        async with self.lock:
            busy = None if cfg.capacity is None else await cfg.capacity.busy()
            if busy is not None:
                m.call_checks_total.labels(name, "skipped").inc()
                self.log.info("call check skipped", call=name, reason=busy, by=by)
                return False, f"not placed: {busy}", None
            r = await place(cfg.spec(), cfg.deadline())
        ok, reason = cfg.judge(r)
        m.call_check_up.labels(name).set(1 if ok else 0)
        m.call_checks_total.labels(name, "ok" if ok else "failed").inc()
        if r.answered_s is not None:
            m.call_post_dial_delay_seconds.labels(name).set(r.answered_s)
        if r.loss_ratio is not None:
            m.call_rtp_loss_ratio.labels(name).set(r.loss_ratio)
        if r.jitter_s is not None:
            m.call_jitter_seconds.labels(name).set(r.jitter_s)
        if ok:
            m.call_last_success.labels(name).set_to_current_time()
        self.log.info("call check", call=name, ok=ok, reason=reason, by=by)
        self.hub.checked(Verdict(call(name), ok, self.hub.clock(), reason))
        return ok, reason, r


FEATURE = Calls()
