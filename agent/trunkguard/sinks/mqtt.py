"""MQTT: retained per-object topics, the events stream, the retained `state` snapshot,
the heartbeat and takeover claims.

Under <prefix>/<site>/<node>/: trunks/<name>, links/<name>, peers/<site> (and
trunks/<name>/targets/<dest>), sensors/<name>, site, routes/<group> and state are
retained; events carries every transition, decision, sensor, site, takeover and fence
change. `heartbeat` is retained with an MQTT 5 expiry and republished every interval
(and at once when the site, a peer, a takeover or the fence changes): peers judge us
alive by it and read our votes from it. `takeover/<peer>` is our retained claim on a
peer's calls, cleared when we release them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from trunkguard.bus.mqtt import MqttPublisher
from trunkguard.core.engine import is_routing
from trunkguard.core.events import (
    Decision,
    DestTransition,
    Event,
    Fence,
    SensorChange,
    SensorReading,
    SiteChange,
    TakeoverChange,
    Transition,
)
from trunkguard.core.ids import Kind
from trunkguard.hub import Hub
from trunkguard.sinks import views


class MqttSink:
    def __init__(
        self,
        hub: Hub,
        mqtt: MqttPublisher,
        facts: Callable[[], views.Facts],
        heartbeat: float = 1.0,
        expiry: float = 3.0,
    ) -> None:
        self.hub, self.mqtt, self.facts = hub, mqtt, facts
        self.seq = 0
        self.beats = 0
        self.interval, self.expiry = heartbeat, expiry
        hub.subscribe(Transition, self.transition)
        hub.subscribe(DestTransition, self.dest_transition)
        hub.subscribe(SensorChange, self.sensor_change)
        hub.subscribe(SensorReading, self.reading)
        hub.subscribe(SiteChange, self.site)
        hub.subscribe(Decision, self.decision)
        hub.subscribe(TakeoverChange, self.takeover)
        hub.subscribe(Fence, self.fence)
        hub.after_each(self.batch)
        for peer, tk in hub.engine.takeovers.items():
            if tk.serving:  # restored after a restart: the claim stands
                self._claim(peer)

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
        doc = views.route(self.hub.engine, d.group, self.hub.clock(), self.facts())
        self.mqtt.publish(f"routes/{d.group}", doc, retain=True)
        old = None if d.old is None else str(d.old)
        self._event(
            "route", d.at, group=d.group, old=old, new=str(d.new), kind=d.kind, reason=d.reason
        )

    def takeover(self, c: TakeoverChange) -> None:
        if c.old is not c.new:
            self._claim(c.peer)
        self._event(
            "takeover",
            c.at,
            peer=c.peer,
            old=c.old,
            new=c.new,
            result=c.result or None,
            reason=c.reason,
        )

    def _claim(self, peer: str) -> None:
        """Our claim as it stands. Withdrawn is a document too, not an empty payload: a
        bridge that was down while a topic was cleared never hears of it (mosquitto
        2.0.11 resyncs only what is retained), and the stale claim would stand."""
        tk = self.hub.engine.takeovers[peer]
        doc = {
            "peer": peer,
            "state": tk.state.value,
            "claimed": tk.serving,
            "since": self.facts().wall(tk.since),
            "reason": tk.reason,
        }
        self.mqtt.publish(f"takeover/{peer}", doc, retain=True)

    def fence(self, f: Fence) -> None:
        self._event("fence", f.at, on=f.on, reason=f.reason, lasted_s=round(f.at - f.since, 1))

    def batch(self, events: Sequence[Event]) -> None:
        if any(is_routing(ev) for ev in events):
            self.publish_state()
        if any(_peers_see(ev) for ev in events):
            self.beat()

    def beat(self) -> None:
        self.beats += 1
        doc = views.heartbeat(self.hub.engine, self.facts(), self.beats, self.interval, self.expiry)
        self.mqtt.publish("heartbeat", doc, retain=True, expiry=self.expiry)

    async def run(self) -> None:
        """The heartbeat, every interval for as long as the agent runs."""
        while True:
            self.beat()
            await asyncio.sleep(self.interval)

    def publish_state(self) -> None:
        self.seq += 1
        doc = views.snapshot(self.hub.engine, self.hub.clock(), self.facts())
        self.mqtt.publish("state", {**doc, "seq": self.seq}, retain=True)


def _peers_see(ev: Event) -> bool:
    """What peers read from our heartbeat: site state, our views of them, takeovers."""
    if isinstance(ev, Transition):
        return ev.target.kind is Kind.PEER
    return isinstance(ev, SiteChange | TakeoverChange | Fence)
