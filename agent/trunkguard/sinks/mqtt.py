"""MQTT: retained per-object topics, the events stream and the retained `state` snapshot.

Under <prefix>/<site>/<node>/: trunks/<name> and links/<name> (and
trunks/<name>/targets/<dest>), sensors/<name>, site, routes/<group> and state are
retained; events carries every transition, decision, sensor and site change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trunkguard.bus.mqtt import MqttPublisher
from trunkguard.core.engine import is_routing
from trunkguard.core.events import (
    Decision,
    DestTransition,
    Event,
    SensorChange,
    SensorReading,
    SiteChange,
    Transition,
)
from trunkguard.hub import Hub
from trunkguard.sinks import views


class MqttSink:
    def __init__(self, hub: Hub, mqtt: MqttPublisher, facts: Callable[[], views.Facts]) -> None:
        self.hub, self.mqtt, self.facts = hub, mqtt, facts
        self.seq = 0
        hub.subscribe(Transition, self.transition)
        hub.subscribe(DestTransition, self.dest_transition)
        hub.subscribe(SensorChange, self.sensor_change)
        hub.subscribe(SensorReading, self.reading)
        hub.subscribe(SiteChange, self.site)
        hub.subscribe(Decision, self.decision)
        hub.after_each(self.batch)

    def _event(self, what: str, at: float, **fields: Any) -> None:
        self.mqtt.publish("events", {"type": what, **fields, "at": self.facts().wall(at)})

    def transition(self, t: Transition) -> None:
        engine, f = self.hub.engine, self.facts()
        topic = f"{t.target.kind.value}s/{t.target.name}"
        self.mqtt.publish(topic, views.target(engine, t.target, f), retain=True)
        target = str(t.target)
        self._event("transition", t.at, target=target, old=t.old, new=t.new, reason=t.reason)

    def dest_transition(self, t: DestTransition) -> None:
        since = self.facts().wall(t.at)
        payload = {"state": t.new.value, "since": since, "reason": t.reason}
        topic = f"trunks/{t.target.name}/targets/{t.target.dest}"
        self.mqtt.publish(topic, payload, retain=True)

    def sensor_change(self, c: SensorChange) -> None:
        self._event("sensor", c.at, sensor=c.sensor, old=c.old, new=c.new, reason=c.reason)

    def reading(self, r: SensorReading) -> None:
        sh = self.hub.engine.sensors[r.sensor]
        self.mqtt.publish(f"sensors/{r.sensor}", views.sensor(sh, r.at, self.facts()), retain=True)

    def site(self, c: SiteChange) -> None:
        self.mqtt.publish("site", views.site(self.hub.engine, self.facts()), retain=True)
        self._event("site", c.at, old=c.old, new=c.new, reason=c.reason, forced=c.forced)

    def decision(self, d: Decision) -> None:
        self.mqtt.publish(f"routes/{d.group}", views.route(self.hub.engine, d.group), retain=True)
        old = None if d.old is None else str(d.old)
        self._event(
            "route", d.at, group=d.group, old=old, new=str(d.new), kind=d.kind, reason=d.reason
        )

    def batch(self, events: Sequence[Event]) -> None:
        if any(is_routing(ev) for ev in events):
            self.publish_state()

    def publish_state(self) -> None:
        self.seq += 1
        doc = views.snapshot(self.hub.engine, self.hub.clock(), self.facts())
        self.mqtt.publish("state", {**doc, "seq": self.seq}, retain=True)
