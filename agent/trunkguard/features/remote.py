"""Signed operator commands over MQTT (section `commands`): who may do what, and the
agent's side of <prefix>/<site>/<node>/cmd and <prefix>/<site>/cmd.

A command is the same typed Command the local socket runs (commands.py); nothing
received is ever run as a command line or a template. Each message is checked in
order, and any refusal is answered on `cmd/result` (and on an MQTT 5 Response Topic)
with its reason, logged once per reason and counted in trunkguard_commands_total:
too large, sent retained, malformed, unsigned, unknown key, bad signature, wrong
audience, lifetime, expired, issued in the future, replayed id, counter not above the
last one for its key (persisted, so a restart does not reopen old counters), action
not allowed for the key, unknown action or bad arguments. Then it runs; the core
may still refuse it (a path that does not qualify), and that is answered too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, model_validator

from trunkguard import persist
from trunkguard.bus.mqtt import Received
from trunkguard.commands import (
    ACTIONS,
    Command,
    CommandError,
    Drill,
    Evacuate,
    Failback,
    Failover,
    Maintenance,
    Release,
    Status,
    parse,
)
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Duration, Lines, Name, Strict
from trunkguard.signing import Body, Rejected, Right, command_id, public_key, verify

if TYPE_CHECKING:
    from trunkguard.config import Config

REBIRTH = "rebirth"  # an action of its own: republish everything retained
_RIGHT: dict[type, Right] = {
    Status: Right.READ,
    Maintenance: Right.MAINTENANCE,
    Failover: Right.ROUTING,
    Failback: Right.ROUTING,
    Release: Right.ROUTING,
    Evacuate: Right.EVACUATION,
    Drill: Right.DRILL,
}


class KeyConfig(Strict):
    public_key: str | None = None  # base64 of the 32 raw bytes (keygen's NAME.pub), or PEM
    public_key_file: str | None = None
    allow: list[Right] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_key(self) -> KeyConfig:
        if (self.public_key is None) == (self.public_key_file is None):
            raise ValueError("set public_key or public_key_file")
        if self.public_key is not None:
            public_key(self.public_key)  # a bad key is a config error, with its line
        return self

    def load(self) -> Ed25519PublicKey:
        text = self.public_key
        if text is None:
            assert self.public_key_file is not None
            text = Path(self.public_key_file).read_text()
        return public_key(text)


class CommandsConfig(Strict):
    keys: dict[Name, KeyConfig] = {}
    max_skew: Duration = 5.0  # how far in the future issued_at may be (clocks differ)


class Remote(Feature):
    name = "commands"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        if cfg.commands.keys and cfg.mqtt is None:
            problems.append(
                lines.problem(("commands",), "signed commands come over MQTT: set mqtt")
            )
        for name, k in cfg.commands.keys.items():
            if k.public_key_file is not None:
                try:
                    k.load()
                except (OSError, ValueError) as e:
                    loc = ("commands", "keys", name, "public_key_file")
                    problems.append(lines.problem(loc, f"{k.public_key_file}: {e}"))
        return problems

    def build(self, ctx: Context) -> Parts:
        if ctx.mqtt is None or ctx.cfg.mqtt is None or not ctx.cfg.commands.keys:
            return Parts()
        inbox = Inbox(ctx)
        for topic in inbox.topics:
            ctx.topics[topic] = inbox.handle
            ctx.as_published.add(topic)
        return Parts()


class Inbox:
    """Commands in, verified, run, answered."""

    def __init__(self, ctx: Context) -> None:
        cfg, mq = ctx.cfg, ctx.cfg.mqtt
        assert ctx.mqtt is not None and mq is not None and ctx.execute is not None
        self.ctx, self.mqtt, self.execute = ctx, ctx.mqtt, ctx.execute
        prefix = mq.prefix.strip("/")
        self.topics = (f"{prefix}/{cfg.site}/{cfg.node}/cmd", f"{prefix}/{cfg.site}/cmd")
        self.audiences = (f"{cfg.site}/{cfg.node}", cfg.site)
        self.keys = {name: k.load() for name, k in cfg.commands.keys.items()}
        self.allow = {name: set(k.allow) for name, k in cfg.commands.keys.items()}
        self.skew_ms = round(cfg.commands.max_skew * 1000)
        self.limit = mq.max_payload
        self.state_dir = cfg.state_dir
        self.counters = persist.load_counters(cfg.state_dir)
        self.seen: dict[str, int] = {}  # command id -> expires_at (ms), for replays
        self.said: str | None = None  # the last refusal logged (once per reason)

    def handle(self, m: Received) -> None:
        now_ms = time.time_ns() // 1_000_000
        cid = command_id(m.payload) if len(m.payload) <= self.limit else None
        try:
            body = self._check(m, now_ms)
            command = self._command(body)
            self._remember(body, now_ms)
            result = self._run(command)
        except Rejected as r:
            self._answer(m, cid, False, r.reason, str(r))
            return
        self._answer(m, cid, True, "ok", result, body)

    def _check(self, m: Received, now_ms: int) -> Body:
        if len(m.payload) > self.limit:
            raise Rejected("too_large", f"{len(m.payload)} bytes (max_payload {self.limit})")
        if m.retained:
            raise Rejected("retained", "a command must never be retained")
        body = verify(m.payload, self.keys, self.audiences, now_ms, self.skew_ms)
        if body.id in self.seen:
            raise Rejected("replayed", f"command {body.id} was already received")
        last = self.counters.get(body.key_id, -1)
        if body.counter <= last:
            raise Rejected("counter", f"counter {body.counter} not above {last} for {body.key_id}")
        return body

    def _command(self, body: Body) -> Command | None:
        """The typed command (None: rebirth), if the key may use it."""
        if body.action == REBIRTH:
            need, command = Right.READ, None
        else:
            try:
                command = parse({**body.args, "cmd": body.action})
            except CommandError as e:
                known = body.action in ACTIONS
                raise Rejected("bad_arguments" if known else "unknown_action", str(e)) from None
            need = _RIGHT[type(command)]
        if need not in self.allow[body.key_id]:
            raise Rejected("forbidden", f"key {body.key_id} may not use {need.value}")
        return command

    def _remember(self, body: Body, now_ms: int) -> None:
        """Counter saved before anything runs: a crash cannot reopen it."""
        self.seen = {i: e for i, e in self.seen.items() if e >= now_ms}
        counters = {**self.counters, body.key_id: body.counter}
        try:
            persist.save_counters(self.state_dir, counters)
        except OSError as e:
            raise Rejected("state", f"cannot save the key's counter, refusing: {e}") from None
        self.counters = counters
        self.seen[body.id] = body.expires_at

    def _run(self, command: Command | None) -> Any:
        if command is None:
            self.mqtt.rebirth()
            return {"rebirth": True}
        try:
            return self.execute(command)
        except CommandError as e:
            raise Rejected("refused", str(e)) from None

    def _answer(
        self,
        m: Received,
        cid: str | None,
        ok: bool,
        reason: str,
        result: Any,
        body: Body | None = None,
    ) -> None:
        self.ctx.metrics.commands_total.labels(result=reason).inc()
        cfg = self.ctx.cfg
        doc: dict[str, Any] = {"id": cid, "ok": ok, "reason": reason, "site": cfg.site}
        doc |= {"node": cfg.node, "result" if ok else "error": result}
        if ok and body is not None:
            fields = {"key_id": body.key_id, "action": body.action, "args": dict(body.args)}
            self.ctx.log.warning("signed command", id=body.id, **fields)
        elif reason != self.said:
            self.said = reason
            self.ctx.log.warning("signed command refused", id=cid, reason=reason, error=result)
        if cid is None and not ok:
            return  # nothing to answer to: counted (a flood is not echoed)
        self.mqtt.publish("cmd/result", doc)
        if m.response_topic:
            self.mqtt.reply(m.response_topic, doc, m.correlation)


FEATURE = Remote()
