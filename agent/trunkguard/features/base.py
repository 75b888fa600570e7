"""What a feature module is: one capability with its config section and its wiring.

A feature checks what spans sections (references, ownership), tells the core what
to watch and decide (core()), and turns its section into the running parts of one
generation (build()): inputs that report to the hub, actuators, and tasks. A reload
builds a new generation; the core and the long-lived sinks stay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from trunkguard.act.base import Actuator
from trunkguard.bus.mqtt import Handler, MqttPublisher
from trunkguard.commands import Command
from trunkguard.core.engine import CoreSpec
from trunkguard.drills import Drills
from trunkguard.hub import Hub
from trunkguard.obs.metrics import Metrics
from trunkguard.schema import Lines

if TYPE_CHECKING:
    from trunkguard.config import Config
    from trunkguard.features.calls import Caller
    from trunkguard.sinks.incidents import IncidentSink

Task = tuple[str, Callable[[], Awaitable[None]]]


@dataclass
class Context:
    """What a feature may use to build one generation."""

    cfg: Config
    hub: Hub
    metrics: Metrics
    log: FilteringBoundLogger
    mqtt: MqttPublisher | None
    env: Mapping[str, str]  # for programs: TRUNKGUARD_SITE, TRUNKGUARD_NODE
    # Runs an operator command (what the control socket runs), for remote commands.
    execute: Callable[[Command], dict[str, Any]] | None = None
    drills: Drills | None = None  # for scheduled drills
    caller: Caller | None = None  # places call checks (the schedule's and drills')
    incidents: IncidentSink | None = None  # notifiers attach to it
    topics: dict[str, Handler] = field(default_factory=dict)  # MQTT subscriptions
    as_published: set[str] = field(default_factory=set)  # of those: live only, retain as sent


@dataclass
class Parts:
    """One feature's share of a generation."""

    tasks: list[Task] = field(default_factory=list)
    actuators: list[Actuator] = field(default_factory=list)
    close: list[Callable[[], object]] = field(default_factory=list)


class Feature:
    name = "feature"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        """Problems that span sections, each one line with its key path and line."""
        return []

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        """Add what this feature makes the core watch or decide."""

    def build(self, ctx: Context) -> Parts:
        return Parts()
