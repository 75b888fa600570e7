"""The agent's HTTP listener for Prometheus (section `metrics`) and the local control
socket for the CLI (section `control`)."""

from __future__ import annotations

import ipaddress

from pydantic import field_validator

from trunkguard.schema import Strict


class MetricsConfig(Strict):
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen must be HOST:PORT, got {v!r}")
        ipaddress.ip_address(host.strip("[]"))
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ControlConfig(Strict):
    socket: str = "/run/trunkguard/control.sock"
