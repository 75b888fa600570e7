"""Unit-test helpers for the core: an Engine whose answers are sorted into kinds, and
the old positional way of building one (targets' params, groups, quorums, inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trunkguard.core.engine import CoreSpec, Engine, TrunkSpec
from trunkguard.core.events import (
    Decision,
    DestTransition,
    Event,
    SensorChange,
    SiteChange,
    Transition,
)
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import Paths, TargetId
from trunkguard.core.link import LinkParams
from trunkguard.core.policy import GroupSpec
from trunkguard.core.sensor import SensorSpec
from trunkguard.core.site import SiteSpec
from trunkguard.core.trunk import Quorum


@dataclass
class Step:
    """One engine answer, by kind (as the shell's sinks see it, by type)."""

    events: Sequence[Event] = ()

    def _of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if type(e) is kind]

    @property
    def transitions(self) -> list[Transition]:
        return self._of(Transition)

    @property
    def decisions(self) -> list[Decision]:
        return self._of(Decision)

    @property
    def dest_transitions(self) -> list[DestTransition]:
        return self._of(DestTransition)

    @property
    def sensor_changes(self) -> list[SensorChange]:
        return self._of(SensorChange)

    @property
    def site_changes(self) -> list[SiteChange]:
        return self._of(SiteChange)

    def __bool__(self) -> bool:
        return bool(
            self.transitions
            or self.decisions
            or self.dest_transitions
            or self.sensor_changes
            or self.site_changes
        )


@dataclass(frozen=True)
class Inputs:
    links: Mapping[TargetId, LinkParams] = field(default_factory=dict)
    depends: Mapping[TargetId, tuple[TargetId, ...]] = field(default_factory=dict)
    sensors: Mapping[str, SensorSpec] = field(default_factory=dict)
    site: SiteSpec = field(default_factory=SiteSpec)


def spec(
    targets: Mapping[TargetId, HealthParams],
    groups: list[GroupSpec],
    quorums: Mapping[TargetId, Quorum] | None = None,
    inputs: Inputs | None = None,
) -> CoreSpec:
    inp = inputs or Inputs()
    q = quorums or {}
    return CoreSpec(
        trunks={
            t: TrunkSpec(p, q.get(t, Quorum()), inp.depends.get(t, ())) for t, p in targets.items()
        },
        links=dict(inp.links),
        sensors=dict(inp.sensors),
        site=inp.site,
        groups=list(groups),
    )


class StepEngine(Engine):
    """The Engine with its answers wrapped in Step."""

    def __init__(
        self,
        targets: Mapping[TargetId, HealthParams],
        groups: list[GroupSpec],
        quorums: Mapping[TargetId, Quorum] | None = None,
        inputs: Inputs | None = None,
        now: float = 0.0,
    ) -> None:
        super().__init__(spec(targets, groups, quorums, inputs), now)

    def reconfigure(self, *args, **kw):  # type: ignore[no-untyped-def,override]
        if args and isinstance(args[0], CoreSpec):
            return Step(super().reconfigure(*args, **kw))
        now = kw.pop("now", 0.0)
        return Step(super().reconfigure(spec(*args, **kw), now))

    def observe(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().observe(*a, **kw))

    def set_dests(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().set_dests(*a, **kw))

    def observe_link(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().observe_link(*a, **kw))

    def observe_sensor(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().observe_sensor(*a, **kw))

    def tick(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().tick(*a, **kw))

    def set_maintenance(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().set_maintenance(*a, **kw))

    def evacuate(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().evacuate(*a, **kw))

    def failover(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().failover(*a, **kw))

    def failback(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().failback(*a, **kw))

    def drill_sensor(self, *a, **kw):  # type: ignore[no-untyped-def,override]
        return Step(super().drill_sensor(*a, **kw))


def texts(desired: Mapping[str, Paths]) -> dict[str, str]:
    """Desired routing as text ("a", "a+b"), as the config and status name paths."""
    return {g: str(p) for g, p in desired.items()}


def routes(text: Mapping[str, str]) -> dict[str, Paths]:
    """Desired routing from text: {"g": "a"}, {"g": "a+b"} (multipath)."""
    return {g: Paths.parse(p) for g, p in text.items()}
