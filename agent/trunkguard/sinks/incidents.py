"""Incidents out (core/incident.py decides them): logged as they open, change and
close, retained on MQTT as incidents/<id> (the last closed ones too, cleared as they
age out), shown in `status`, and offered to the operator's notifiers."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from trunkguard.bus.mqtt import MqttPublisher
from trunkguard.core.events import Event
from trunkguard.core.incident import Incident, Tracker
from trunkguard.hub import Hub

Notify = Callable[[str, dict[str, Any]], None]  # (opened | updated | closed, document)


class IncidentSink:
    def __init__(
        self,
        hub: Hub,
        wall: Callable[[float], str],
        log: FilteringBoundLogger,
        mqtt: MqttPublisher | None,
        site: str,
        node: str,
    ) -> None:
        self.hub, self.wall, self.log, self.mqtt = hub, wall, log, mqtt
        self.where = {"site": site, "node": node}
        self.tracker = Tracker(self._new_id)
        self.notifiers: list[Notify] = []  # set by each generation (features/notify.py)
        self._retained: set[str] = set()
        hub.after_each(self.batch)

    def _new_id(self, at: float, key: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - self.hub.clock() + at))
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", key)[:40]
        return f"{stamp}-{slug}-{secrets.token_hex(2)}"

    def doc(self, inc: Incident) -> dict[str, Any]:
        return {**inc.doc(self.wall), **self.where}

    def batch(self, events: Sequence[Event]) -> None:
        changed = self.tracker.feed(events, self.hub.clock(), self.hub.engine.groups)
        for inc in changed:
            what = "opened" if inc.revision == 1 else "closed" if inc.closed else "updated"
            doc = self.doc(inc)
            log = self.log.error if inc.severity == "critical" else self.log.warning
            log(f"incident {what}", id=inc.id, severity=inc.severity, cause=inc.cause,
                impact=inc.impact)  # fmt: skip
            if self.mqtt is not None:
                self.mqtt.publish(f"incidents/{inc.id}", doc, retain=True)
                self._retained.add(inc.id)
            for notify in self.notifiers:
                notify(what, doc)
        if changed and self.mqtt is not None:
            kept = set(self.tracker.open_ids()) | {i.id for i in self.tracker.closed}
            for gone in self._retained - kept:
                self.mqtt.publish(f"incidents/{gone}", b"", retain=True)
            self._retained &= kept

    def view(self) -> list[dict[str, Any]]:
        """Open incidents first, then the last closed ones, newest first (for status)."""
        t = self.tracker
        return [self.doc(i) for i in [*t.open.values(), *reversed(t.closed)]]
