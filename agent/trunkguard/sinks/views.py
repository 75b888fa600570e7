"""JSON documents of the core's view, for MQTT and `trunkguard status`.

Pure functions: they read the engine (never change it) and the facts the shell
passes in; building a document changes nothing, so a status request and a
publication see the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trunkguard import __version__
from trunkguard.core.engine import Engine
from trunkguard.core.events import ProbeOutcome
from trunkguard.core.ids import Kind, TargetId
from trunkguard.core.peer import PeerHealth
from trunkguard.core.policy import PathSpec
from trunkguard.core.sensor import SensorHealth
from trunkguard.core.site import fmt_seconds
from trunkguard.core.takeover import Takeover

Json = dict[str, Any]
SCHEMA = 1


class Wall:
    """Monotonic times shown as UTC wall-clock timestamps."""

    def __init__(self, mono_now: float, wall_now: float) -> None:
        self.offset = wall_now - mono_now

    def __call__(self, mono: float) -> str:
        t = mono + self.offset
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


@dataclass(frozen=True)
class Facts:
    """What the shell knows beside the core: who we are, last probes, actuators, MQTT."""

    site: str
    node: str
    started: float
    wall: Callable[[float], str]
    probes: Mapping[TargetId, ProbeOutcome]
    actuators: Mapping[str, bool]  # name -> converged
    mqtt: bool | None  # connected; None without MQTT
    # Call checks: (when it last passed, or was configured; how old that may be).
    verify: Mapping[TargetId, tuple[float, float]] = field(default_factory=dict)


def target(engine: Engine, tid: TargetId, f: Facts) -> Json:
    if tid.kind is Kind.LINK:
        return link(engine, tid, f)
    if tid.kind is Kind.PEER:
        return peer(engine.peers[tid], f)
    th = engine.targets[tid]
    out: Json = {"state": th.state.value, "since": f.wall(th.since), "reason": th.reason}
    o = f.probes.get(tid)
    if o is not None:
        out["last_code"] = o.code
        out["last_rtt_ms"] = None if o.rtt is None else round(o.rtt * 1000, 2)
    if th.hold_until:
        out["hold_until"] = f.wall(th.hold_until)
    if len(th.dests) > 1 or any(th.dests):
        out["healthy_when"] = str(th.quorum)
        out["targets"] = {
            k: {"state": d.state.value, "reason": d.reason} for k, d in th.dests.items()
        }
    return out


def link(engine: Engine, tid: TargetId, f: Facts) -> Json:
    lh = engine.links[tid]
    out: Json = {
        "state": lh.state.value,
        "since": f.wall(lh.since),
        "reason": lh.reason,
        "kernel": lh.seen.value,
    }
    if lh.seen_reason:
        out["kernel_reason"] = lh.seen_reason
    due = lh.due()
    if due is not None:
        out["settles_at"] = f.wall(due)
    return out


def peer(ph: PeerHealth, f: Facts) -> Json:
    """A peer site: its state, and each node's session with the age of its heartbeat."""
    out: Json = {"state": ph.state.value, "since": f.wall(ph.since), "reason": ph.reason}
    nodes: Json = {}
    for node, s in ph.sessions.items():
        n: Json = {"epoch": s.epoch if s.epoch >= 0 else None, "dead": s.dead}
        if s.fresh_until is not None:
            n["heartbeat_until"] = f.wall(s.fresh_until)
        if s.evacuating:
            n["evacuating"] = True
        if s.fenced:
            n["fenced"] = True
        nodes[node] = n
    out["nodes"] = nodes
    if ph.stale:
        out["stale_messages"] = ph.stale
    return out


def takeover(tk: Takeover, f: Facts) -> Json:
    s = tk.spec
    return {
        "state": tk.state.value,
        "since": f.wall(tk.since),
        "reason": tk.reason,
        "serving": tk.serving,
        "confirm": [str(t) for t in s.confirm],
        "fence_s": s.fence,
        "hold_s": s.hold,
        "release": s.release.value,
        "rival_claims": dict(tk.claims),
    }


def heartbeat(engine: Engine, f: Facts, seq: int, interval: float, expiry: float) -> Json:
    """The small retained heartbeat: alive, our site's state, and our votes on peers."""
    return {
        "seq": seq,
        "interval_s": interval,
        "expiry_s": expiry,
        "site": engine.site.state.value,
        "peers": {t.name: ph.state.value for t, ph in engine.peers.items()},
        "takeovers": {p: tk.state.value for p, tk in engine.takeovers.items()},
        "fenced": engine.fenced is not None,
    }


def sensor(sh: SensorHealth, now: float, f: Facts) -> Json:
    ttc = sh.time_to_critical(now)
    rate = sh.rate_per_minute()
    return {
        "state": sh.level.value,
        "since": f.wall(sh.since),
        "reason": sh.reason,
        "value": sh.value,
        "unit": sh.spec.unit,
        "read_at": None if sh.last_at is None else f.wall(sh.last_at),
        "rate_per_minute": None if rate is None else round(rate, 3),
        "time_to_critical_s": None if ttc is None else round(ttc, 1),
        "error": sh.error or None,
    }


def site(engine: Engine, f: Facts) -> Json:
    s = engine.site
    return {
        "state": s.state.value,
        "since": f.wall(s.since),
        "reason": s.reason,
        "forced": s.forced,
        "rule_holds": s.holding,
        "return": s.spec.return_mode,
        "hold_s": s.spec.hold,
    }


def proof(engine: Engine, group: str, p: PathSpec, now: float, f: Facts) -> Json | None:
    """How well a path's call check proves it: the age of its last passing call, and
    the two alarms: unverified (older than the check's max_age) and silent (the path
    qualifies on OPTIONS while its calls fail)."""
    if p.verified_by is None:
        return None
    states = engine.states()
    passed, max_age = f.verify.get(p.verified_by, (f.started, 86400.0))
    age = now - passed
    return {
        "check": str(p.verified_by),
        "state": states.get(p.verified_by),
        "age_s": round(age, 1),
        "max_age_s": max_age,
        "unverified": age > max_age,
        "silent": engine.groups[group].silent(p, states),
    }


def alarms(engine: Engine, now: float, f: Facts) -> list[str]:
    """What needs a person: groups without a path, backups unproven or silently broken."""
    out = [f"route group {g} has no path" for g, gp in engine.groups.items() if gp.alarm]
    for g, gp in engine.groups.items():
        for p in gp.spec.paths:
            v = proof(engine, g, p, now, f)
            if v is None:
                continue
            if v["silent"]:
                out.append(f"path {p.name} of {g} answers OPTIONS but fails calls ({v['check']})")
            if v["unverified"]:
                age = fmt_seconds(v["max_age_s"])
                out.append(f"path {p.name} of {g} unverified: no passing call in {age}")
    return out


def route(engine: Engine, group: str, now: float, f: Facts) -> Json:
    g = engine.groups[group]
    states = engine.states()
    return {
        "active": None if g.active is None else str(g.active),
        "active_paths": list(g.members()),
        "mode": g.spec.mode.value,
        "pinned": g.pinned,
        "evacuated": g.evacuated,
        "took_over": g.took_over,
        "alarm": g.alarm,
        "ready": g.ready,
        "failback": g.spec.failback.value,
        "hold_s": g.spec.hold,
        "paths": [
            {
                "name": p.name,
                "remote": p.remote,
                "serves": p.serves,
                "verified_by": None if p.verified_by is None else str(p.verified_by),
                "verified": None if p.verified_by is None else states.get(p.verified_by),
                "proof": proof(engine, group, p, now, f),
                "requires": [str(t) for t in p.requires],
                "qualifies": g.qualifies(p, states),
            }
            for p in g.spec.paths
        ],
    }


def snapshot(engine: Engine, now: float, f: Facts) -> Json:
    """The whole state, as `status` shows it and the retained `state` topic carries it."""
    return {
        "schema": SCHEMA,
        "site": f.site,
        "node": f.node,
        "version": __version__,
        "uptime_s": round(now - f.started, 1),
        "targets": {str(t): target(engine, t, f) for t in engine.targets},
        "links": {str(t): link(engine, t, f) for t in engine.links},
        "sensors": {n: sensor(sh, now, f) for n, sh in engine.sensors.items()},
        "evacuation": site(engine, f),
        "peers": {t.name: peer(ph, f) for t, ph in engine.peers.items()},
        "takeovers": {p: takeover(tk, f) for p, tk in engine.takeovers.items()},
        "fenced": engine.fenced,
        "routes": {g: route(engine, g, now, f) for g in engine.groups},
        "alarms": alarms(engine, now, f),
        "actuators": {name: {"converged": ok} for name, ok in f.actuators.items()},
        "mqtt": None if f.mqtt is None else {"connected": f.mqtt},
    }
