"""Sensors: cooling, room, power and facility values (section `sensors`).

Each sensor is read from exactly one source. A source is a module of this package
holding its config model (and its reader); registering one is adding it as a field
of SensorConfig below: its key in the config is the field's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from trunkguard.bus.mqtt import Handler, Received
from trunkguard.core.engine import CoreSpec
from trunkguard.core.sensor import SensorSpec
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.features.sensors.mqtt import MqttSource
from trunkguard.features.sensors.nut import NutSource
from trunkguard.features.sensors.poller import SensorPlan, SensorWatcher
from trunkguard.features.sensors.programs import CommandSource, IpmiSource, LmSensorsSource
from trunkguard.features.sensors.source import ANY_UNIT, PLAUSIBLE, Source, implausible
from trunkguard.features.sensors.sysfs import HwmonSource, ThermalSource
from trunkguard.schema import Duration, Lines, Strict
from trunkguard.watch.sensor_parse import SensorReadError

if TYPE_CHECKING:
    from trunkguard.config import Config


class SensorConfig(Strict):
    description: str = ""
    kind: Literal["number", "bool"] = "number"
    unit: str = ""
    # The sources: exactly one is set.
    hwmon: HwmonSource | None = None
    thermal: ThermalSource | None = None
    lm_sensors: LmSensorsSource | None = None
    ipmi: IpmiSource | None = None
    command: CommandSource | None = None
    mqtt: MqttSource | None = None
    nut: NutSource | None = None
    interval: Duration | None = None  # default: the source's own (10s; NUT 2s)
    timeout: Duration = 5.0
    stale_after: Duration = 60.0
    warn: float | None = None
    critical: float | None = None
    direction: Literal["above", "below"] = "above"
    hysteresis: float = Field(1.0, ge=0)
    window: Duration = 300.0
    warn_when: bool | None = None
    critical_when: bool | None = None
    plausible: tuple[float, float] | None = None  # default: by unit (°C: -60 to 200)

    @classmethod
    def sources(cls) -> list[str]:
        return [k for k, f in cls.model_fields.items() if _is_source(f.annotation)]

    @property
    def source(self) -> Source:
        (src,) = [s for k in self.sources() if isinstance(s := getattr(self, k), Source)]
        return src

    @model_validator(mode="after")
    def _consistent(self) -> SensorConfig:
        given = [k for k in self.sources() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one source: {', '.join(self.sources())}")
        if self.kind == "bool":
            if self.warn is not None or self.critical is not None:
                raise ValueError("bool sensors use warn_when/critical_when, not warn/critical")
        else:
            if self.warn_when is not None or self.critical_when is not None:
                raise ValueError("warn_when/critical_when are for kind: bool")
            if self.warn is not None and self.critical is not None:
                above = self.direction == "above"
                if not (self.warn < self.critical if above else self.warn > self.critical):
                    side = "below" if above else "above"
                    raise ValueError(f"warn must be {side} critical (direction {self.direction})")
        if self.source.group() is not None and self.stale_after <= self.poll_interval:
            raise ValueError("stale_after must be longer than interval")
        low, high = self.bounds
        if not low < high:
            raise ValueError("plausible must be [lowest, highest], lowest first")
        for what in ("warn", "critical"):
            limit = getattr(self, what)
            if limit is not None and not low <= limit <= high:
                raise ValueError(f"{what} {limit:g} is outside plausible {low:g} to {high:g}")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        return self.plausible or PLAUSIBLE.get(self.unit.strip(), ANY_UNIT)

    def core_spec(self, name: str) -> SensorSpec:
        return SensorSpec(
            name,
            self.kind,
            self.warn,
            self.critical,
            self.direction,
            self.hysteresis,
            self.window,
            self.stale_after,
            self.warn_when,
            self.critical_when,
            self.unit,
        )

    @property
    def poll_interval(self) -> float:
        return self.interval or self.source.default_interval

    def plan(self, name: str) -> SensorPlan:
        return SensorPlan(
            name, self.source, self.kind, self.poll_interval, self.timeout, self.bounds, self.unit
        )


def _is_source(annotation: object) -> bool:
    args = getattr(annotation, "__args__", ())
    return any(isinstance(a, type) and issubclass(a, Source) for a in args)


class Sensors(Feature):
    name = "sensors"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        for name, sc in cfg.sensors.items():
            where = next(k for k in sc.sources() if getattr(sc, k) is not None)
            if isinstance(sc.source, MqttSource) and cfg.mqtt is None:
                msg = "an mqtt sensor needs the mqtt section (the broker to subscribe on)"
                problems.append(lines.problem(("sensors", name, where), msg))
            for key, msg in sc.source.problems():
                problems.append(lines.problem(("sensors", name, where, key), msg))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        for name, sc in cfg.sensors.items():
            spec.sensors[name] = sc.core_spec(name)

    def build(self, ctx: Context) -> Parts:
        plans = [sc.plan(n) for n, sc in ctx.cfg.sensors.items()]
        for p in plans:
            if isinstance(p.source, MqttSource):
                ctx.topics[p.source.topic] = self._pushed(ctx, p)
        if not any(p.source.group() is not None for p in plans):
            return Parts()
        hub = ctx.hub
        poller = SensorWatcher(plans, hub.sample, log=ctx.log, clock=hub.clock, env=ctx.env)
        return Parts(tasks=[("sensors", poller.run)])

    def _pushed(self, ctx: Context, plan: SensorPlan) -> Handler:
        assert isinstance(plan.source, MqttSource)
        src, hub = plan.source, ctx.hub
        limit = ctx.cfg.mqtt.max_payload if ctx.cfg.mqtt else 4096

        def handle(m: Received) -> None:
            topic, payload = m.topic, m.payload
            try:
                if len(payload) > limit:
                    raise SensorReadError(f"payload of {len(payload)} bytes (max_payload {limit})")
                value = src.parse(payload, plan.kind)
                if (why := implausible(value, plan.plausible, plan.unit)) is not None:
                    raise SensorReadError(why)
                hub.sample(plan.name, value, hub.clock(), "")
            except SensorReadError as e:
                error = f"{topic}: {e}"
                sh = hub.engine.sensors.get(plan.name)
                if sh is not None and sh.error != error:  # once per change, not per message
                    ctx.log.warning("sensor read failed", sensor=plan.name, error=error)
                hub.sample(plan.name, None, hub.clock(), error)

        return handle


FEATURE = Sensors()
