"""Operator commands: one typed Command union, executed by one handler.

The local control socket carries them as JSON requests today (and signed MQTT
commands will carry the same types): a request is parsed into a Command or refused
with a one-line reason; nothing received is ever run as a command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from trunkguard.core.events import Decision
from trunkguard.drills import DrillError, Drills, Plan
from trunkguard.hub import Hub

SITE = "site"  # `maintenance site on|off` is an evacuation


class CommandError(Exception):
    """A command refused; the message is shown to the operator as is."""


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Failover:
    group: str
    path: str


@dataclass(frozen=True)
class Failback:
    group: str


@dataclass(frozen=True)
class Maintenance:
    target: str  # trunk:NAME, link:NAME or a bare name
    on: bool


@dataclass(frozen=True)
class Evacuate:
    on: bool


@dataclass(frozen=True)
class Release:
    peer: str  # a peer site whose calls this agent took over


@dataclass(frozen=True)
class Drill:
    scenario: str
    group: str | None = None
    dry_run: bool = False


Command = Status | Failover | Failback | Maintenance | Evacuate | Release | Drill
ACTIONS = frozenset(
    {"status", "failover", "failback", "maintenance", "evacuate", "release", "drill"}
)


def _text(req: Mapping[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise CommandError(f"{key} must be a non-empty name")
    return v


def _flag(req: Mapping[str, Any]) -> bool:
    v = req.get("on")
    if not isinstance(v, bool):
        raise CommandError("on must be true or false")
    return v


def parse(req: Mapping[str, Any]) -> Command:
    """A request ({"cmd": ..., args}) as a Command; CommandError names what is wrong."""
    cmd = req.get("cmd")
    if cmd == "status":
        return Status()
    if cmd == "failover":
        return Failover(_text(req, "group"), _text(req, "path"))
    if cmd == "failback":
        return Failback(_text(req, "group"))
    if cmd == "evacuate":
        return Evacuate(_flag(req))
    if cmd == "release":
        return Release(_text(req, "peer"))
    if cmd == "drill":
        group = req.get("group")
        dry = req.get("dry_run", False)
        if group is not None and not (isinstance(group, str) and 0 < len(group) <= 256):
            raise CommandError("group must be a non-empty name")
        if not isinstance(dry, bool):
            raise CommandError("dry_run must be true or false")
        return Drill(_text(req, "scenario"), group, dry)
    if cmd == "maintenance":
        target = _text(req, "target")
        return Evacuate(_flag(req)) if target == SITE else Maintenance(target, _flag(req))
    raise CommandError(f"unknown command {cmd!r}")


def request(c: Command) -> dict[str, Any]:
    """The wire form of a command (what parse() reads back)."""
    if isinstance(c, Status):
        return {"cmd": "status"}
    if isinstance(c, Failover):
        return {"cmd": "failover", "group": c.group, "path": c.path}
    if isinstance(c, Failback):
        return {"cmd": "failback", "group": c.group}
    if isinstance(c, Evacuate):
        return {"cmd": "evacuate", "on": c.on}
    if isinstance(c, Release):
        return {"cmd": "release", "peer": c.peer}
    if isinstance(c, Drill):
        return {"cmd": "drill", "scenario": c.scenario, "group": c.group, "dry_run": c.dry_run}
    return {"cmd": "maintenance", "target": c.target, "on": c.on}


class Commands:
    """Runs commands against the core; the results go through the hub like any event."""

    def __init__(
        self,
        hub: Hub,
        status: Callable[[], dict[str, Any]],
        saved: Callable[[], None],
        log: FilteringBoundLogger,
        drills: Drills | None = None,
    ) -> None:
        self.hub, self.status, self.saved, self.log = hub, status, saved, log
        self.drills = drills

    def execute(self, c: Command) -> dict[str, Any]:
        if isinstance(c, Status):
            return self.status()
        if isinstance(c, Drill):
            return self.start_drill(c)
        engine, now = self.hub.engine, self.hub.clock()
        try:
            if isinstance(c, Failover):
                events = engine.failover(c.group, c.path, now)
            elif isinstance(c, Failback):
                events = engine.failback(c.group, now)
            elif isinstance(c, Evacuate):
                events = engine.evacuate(c.on, now)
            elif isinstance(c, Release):
                events = engine.release(c.peer, now)
            else:
                events = engine.set_maintenance(engine.find_target(c.target), c.on, now)
        except (KeyError, ValueError) as e:
            raise CommandError(str(e.args[0] if e.args else e)) from None
        self.log.warning("operator command", **request(c))
        self.hub.emit(events)
        self.saved()
        return {
            "decisions": [str(d.new) for d in events if isinstance(d, Decision)],
            "routes": {
                g: None if p.active is None else str(p.active) for g, p in engine.groups.items()
            },
        }

    async def handle(self, req: dict[str, Any]) -> Any:
        """The control socket's handler."""
        c = parse(req)
        if isinstance(c, Drill):
            return await self.drill(c)
        return self.execute(c)

    def _plan(self, c: Drill) -> tuple[Drills, Plan]:
        if self.drills is None:
            raise CommandError("drills are not available")
        try:
            plan = self.drills.plan(c.scenario, c.group)
        except DrillError as e:
            raise CommandError(str(e)) from None
        self.log.warning("drill", **request(c), id=plan.id, inject=plan.inject)
        return self.drills, plan

    async def drill(self, c: Drill) -> dict[str, Any]:
        """From the local socket: the whole drill, answered with its report."""
        drills, plan = self._plan(c)
        return await drills.run(plan, c.dry_run)

    def start_drill(self, c: Drill) -> dict[str, Any]:
        """From a signed command: answered at once; the report goes to drills/<id>."""
        drills, plan = self._plan(c)
        if not c.dry_run:
            drills.start(plan)
        return {"drill": plan.id, "inject": plan.inject, "report": f"drills/{plan.id}"}
