"""Alarms as they appear and clear (views.alarms): logged once each, and the current
list retained on MQTT (`alarms`) for the NOC. Looked at every second, since a proof
grows old without any event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from trunkguard.bus.mqtt import MqttPublisher
from trunkguard.hub import Hub
from trunkguard.sinks import views

EVERY = 1.0


class AlarmSink:
    def __init__(
        self,
        hub: Hub,
        facts: Callable[[], views.Facts],
        log: FilteringBoundLogger,
        mqtt: MqttPublisher | None,
    ) -> None:
        self.hub, self.facts, self.log, self.mqtt = hub, facts, log, mqtt
        self.current: list[str] | None = None

    def check(self) -> None:
        now = views.alarms(self.hub.engine, self.hub.clock(), self.facts())
        if now == self.current:
            return
        before = set(self.current or ())
        for a in now:
            if a not in before:
                self.log.warning("alarm", alarm=a)
        for a in before - set(now):
            self.log.info("alarm cleared", alarm=a)
        self.current = now
        if self.mqtt is not None:
            self.mqtt.publish("alarms", {"alarms": now}, retain=True)

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(EVERY)
