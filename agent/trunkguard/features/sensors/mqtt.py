"""Values pushed on MQTT topics by facility and BMS controllers (a number, a boolean,
or a field of a JSON document); the sensors feature subscribes on the agent's broker."""

from __future__ import annotations

from pydantic import field_validator

from trunkguard.features.sensors.source import Kind, Sample, Source
from trunkguard.watch.sensor_parse import parse_payload


class MqttSource(Source):
    topic: str
    field: str | None = None  # dot path into a JSON payload; plain value when absent

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "+" in v or "#" in v or "\0" in v:
            raise ValueError(f"topic must be one concrete topic, no wildcards: {v!r}")
        return v

    def parse(self, payload: bytes, kind: Kind) -> Sample:
        return parse_payload(payload, self.field, kind)
