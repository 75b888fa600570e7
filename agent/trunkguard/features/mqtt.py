"""The MQTT session: state out for peers and operators, sensor topics in (section `mqtt`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator

from trunkguard.bus.mqtt import MqttSettings
from trunkguard.features.base import Feature
from trunkguard.schema import Duration, Lines, Name, Strict

if TYPE_CHECKING:
    from trunkguard.config import Config


class MqttTls(Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class MqttConfig(Strict):
    host: str
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    client_id: str | None = None
    prefix: Name = "trunkguard"
    keepalive: Duration = 10.0
    tls: MqttTls | None = None
    # Bigger payloads on subscribed topics are read errors, refused before parsing.
    max_payload: int = Field(4096, ge=16, le=1 << 20)
    # MQTT 5 (message expiry for heartbeats); "3.1.1" only for brokers without it:
    # retained heartbeats then cannot expire and are not believed, only live ones.
    protocol: Literal[5, "3.1.1"] = 5
    heartbeat: Duration = 1.0
    heartbeat_expiry: Duration | None = None  # default: 3 x heartbeat

    def expiry(self) -> float:
        """How long our heartbeat proves we are alive (and peers', by default)."""
        return self.heartbeat_expiry if self.heartbeat_expiry is not None else 3 * self.heartbeat

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return Path(self.password_file).read_text().strip()
        return None

    def settings(self, site: str, node: str) -> MqttSettings:
        tls = self.tls
        return MqttSettings(
            host=self.host,
            port=self.port,
            site=site,
            node=node,
            prefix=self.prefix,
            username=self.username,
            password=self.secret(),
            client_id=self.client_id,
            keepalive=self.keepalive,
            tls_ca_file=tls.ca_file if tls else None,
            tls_cert_file=tls.cert_file if tls else None,
            tls_key_file=tls.key_file if tls else None,
            tls_insecure=tls.insecure if tls else False,
            tls=tls is not None,
            protocol=5 if self.protocol == 5 else 4,
        )


class Mqtt(Feature):
    name = "mqtt"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        m = cfg.mqtt
        if m and m.password_file and not Path(m.password_file).is_file():
            return [lines.problem(("mqtt", "password_file"), f"cannot read {m.password_file}")]
        if m and m.expiry() <= m.heartbeat:
            msg = "heartbeat_expiry must be longer than heartbeat (3 x is the default)"
            return [lines.problem(("mqtt", "heartbeat_expiry"), msg)]
        return []


FEATURE = Mqtt()
