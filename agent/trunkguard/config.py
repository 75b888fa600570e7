"""Configuration: YAML validated by pydantic, every problem reported with key path and line.

Durations are strings with a unit ("500ms", "2s", "1m", "1h"): a bare number is
rejected because "timeout: 500" is ambiguous between seconds and milliseconds, and
guessing wrong on a failover agent is an outage.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from trunkguard import __version__
from trunkguard.act.netlink import RouteSpec, RuleSpec, route_key, rule_key
from trunkguard.core.classify import OkCodes
from trunkguard.core.engine import Inputs
from trunkguard.core.health import HealthParams
from trunkguard.core.link import LinkParams
from trunkguard.core.policy import GroupSpec, PathSpec
from trunkguard.core.sensor import SensorSpec
from trunkguard.core.site import SENSOR_STATES, TARGET_STATES, AllOf, AnyOf, Match, Rule, SiteSpec
from trunkguard.core.trunk import Quorum

if TYPE_CHECKING:
    from trunkguard.watch.cooling import SensorPlan, Source
    from trunkguard.watch.links import LinkSpec

DEFAULT_PATH = "/etc/trunkguard/trunkguard.yaml"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TARGET_KINDS = ("trunk", "link")


def parse_duration(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, str):
        raise ValueError(f"duration needs a unit, e.g. '500ms', '2s' or '1m' (got {v!r})")
    m = _DURATION.match(v)
    if not m:
        raise ValueError(f"bad duration {v!r}: use a number and ms, s, m or h, e.g. '500ms'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(
            f"bad name {v!r}: use letters, digits, '.', '_' or '-' (max 63), starting alphanumeric"
        )
    return v


def _check_ok_codes(v: list[str | int]) -> list[str | int]:
    OkCodes.parse(v)
    return v


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
ZeroDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Name = Annotated[str, AfterValidator(_check_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeSettings(Strict):
    interval: Duration = 1.0
    fast_interval: Duration = 0.2
    timeout: Duration = 0.5
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)
    ok_codes: Annotated[list[str | int], AfterValidator(_check_ok_codes)] = ["2xx"]
    retry_after_cap: Duration = 300.0

    @model_validator(mode="after")
    def _fast_not_slower(self) -> ProbeSettings:
        if self.fast_interval > self.interval:
            raise ValueError("fast_interval must not be longer than interval")
        return self


class ProbeOverrides(Strict):
    interval: Duration | None = None
    fast_interval: Duration | None = None
    timeout: Duration | None = None
    rise: int | None = Field(None, ge=1, le=100)
    fall: int | None = Field(None, ge=1, le=100)
    ok_codes: Annotated[list[str | int], AfterValidator(_check_ok_codes)] | None = None
    retry_after_cap: Duration | None = None


def _check_ip(v: str | None) -> str | None:
    if v is not None:
        ipaddress.ip_address(v)
    return v


IpAddress = Annotated[str, AfterValidator(_check_ip)]


class TlsConfig(Strict):
    """TLS towards a trunk: system CA store unless ca_file; client cert for mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # SNI and certificate name, default: the URI's host
    verify: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self

    def files(self) -> list[tuple[str, str]]:
        return [(k, v) for k in ("ca_file", "cert_file", "key_file") if (v := getattr(self, k))]


class TrunkConfig(ProbeOverrides):
    uri: str
    description: str = ""
    healthy_when: Literal["any", "all"] | Annotated[int, Field(strict=True, ge=1)] = "any"
    source_address: IpAddress | None = None
    source_port: int | None = Field(None, ge=0, le=65535)
    tls: TlsConfig | None = None
    depends_on: list[str] = []  # links the trunk is reached through, e.g. ["link:uplink-a"]

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        from trunkguard.sip.uri import parse_uri

        uri = parse_uri(v)
        if uri.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport {uri.transport} is not supported (udp, tcp or tls)")
        return v

    @model_validator(mode="after")
    def _tls_needs_tls(self) -> TrunkConfig:
        from trunkguard.sip.uri import parse_uri

        if self.tls is not None and parse_uri(self.uri).transport != "tls":
            raise ValueError("tls settings need a sips: URI or ;transport=tls")
        return self


class DnsSettings(Strict):
    nameservers: list[IpAddress] = []  # empty: the system's resolv.conf
    port: int = Field(53, ge=1, le=65535)
    timeout: Duration = 2.0
    min_ttl: Duration = 5.0
    max_ttl: Duration = 3600.0


class SipSettings(Strict):
    source_address: IpAddress | None = None
    source_port: int = Field(0, ge=0, le=65535)
    user_agent: str = f"trunkguard/{__version__}"
    t1: Duration = 0.5
    tls: TlsConfig | None = None  # default for TLS trunks without their own
    dns: DnsSettings = Field(default_factory=DnsSettings)


class NetlinkRoute(Strict):
    dst: str
    gateway: str | None = None
    dev: str | None = None
    table: int | None = Field(None, ge=1, le=0xFFFFFFFF)
    metric: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    weight: int = Field(1, ge=1, le=256)  # this path's share in a multipath group

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str) -> str:
        if v != "default":
            ipaddress.ip_network(v, strict=True)
        return v

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v

    @model_validator(mode="after")
    def _via(self) -> NetlinkRoute:
        if self.gateway is None and self.dev is None:
            raise ValueError("a route needs a gateway, a dev, or both")
        self.spec()  # the actuator's own checks (address families, interface name)
        return self

    def spec(self) -> RouteSpec:
        return RouteSpec(
            self.dst, self.gateway, self.dev, self.table, self.metric, weight=self.weight
        )


class NetlinkRule(Strict):
    """A policy routing rule (ip rule): present while its path is active."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    priority: int = Field(ge=1, le=32765)
    table: int = Field(ge=1, le=0xFFFFFFFF)
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    fwmark: int | None = Field(None, ge=1, le=0xFFFFFFFF)
    iif: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> NetlinkRule:
        self.spec()  # the actuator's own checks (CIDRs, families, interface name)
        return self

    def spec(self) -> RuleSpec:
        return RuleSpec(self.priority, self.table, self.from_, self.to, self.fwmark, self.iif)


class CommandAction(Strict):
    argv: list[str] = Field(min_length=1)
    verify: list[str] | None = Field(None, min_length=1)
    timeout: Duration = 10.0

    @field_validator("argv", "verify")
    @classmethod
    def _absolute(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v[0].startswith("/"):
            raise ValueError(f"program must be an absolute path, got {v[0]!r} (no PATH lookup)")
        return v


class DispatcherAction(Strict):
    """Kamailio dispatcher: these destinations of `setid` active, the group's others off."""

    setid: int = Field(ge=0)
    active: list[str] = Field(min_length=1)

    @field_validator("active")
    @classmethod
    def _uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            if not uri.startswith(("sip:", "sips:")) or any(c.isspace() for c in uri):
                raise ValueError(f"destination must be a sip: URI as in dispatcher.list: {uri!r}")
        return v


class Actions(Strict):
    netlink: list[NetlinkRoute] = []
    rules: list[NetlinkRule] = []
    command: CommandAction | None = None
    kamailio: DispatcherAction | None = None


VarValue = str | int | float | bool


class PathConfig(Strict):
    name: Name
    requires: list[str] = []
    remote: bool = False
    actions: Actions = Field(default_factory=Actions)
    vars: dict[str, VarValue] = {}  # for templates: routes.<group>.vars.<key>


class RouteGroupConfig(Strict):
    failback: Literal["auto", "manual"] = "auto"
    hold: Duration = 30.0
    # multipath: every qualifying path at once (kernel routes only, weighted nexthops)
    mode: Literal["failover", "multipath"] = "failover"
    paths: list[PathConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _multipath_routes_only(self) -> RouteGroupConfig:
        if self.mode == "multipath":
            for p in self.paths:
                if p.actions.command is not None or p.actions.kamailio is not None:
                    raise ValueError(
                        f"path {p.name}: a multipath group steers kernel routes only "
                        "(netlink actions), not command or kamailio"
                    )
        return self


def _check_ifname(v: str) -> str:
    if not 0 < len(v.encode()) < 16 or "/" in v or v.strip() != v or v in (".", ".."):
        raise ValueError(f"bad interface name {v!r}")
    return v


class LinkConfig(Strict):
    interface: Annotated[str, AfterValidator(_check_ifname)]
    gateway: IpAddress | None = None
    address: IpAddress | None = None
    down_when: list[Literal["admin", "carrier", "address", "neighbour"]] = [
        "admin",
        "carrier",
        "address",
        "neighbour",
    ]
    up_hold: ZeroDuration = 5.0
    down_hold: ZeroDuration = 0.0

    def spec(self, name: str) -> LinkSpec:
        from trunkguard.watch.links import LinkSpec

        return LinkSpec(name, self.interface, self.gateway, self.address, frozenset(self.down_when))


class HwmonConfig(Strict):
    chip: str
    label: str | None = None
    input: str | None = None
    root: str = "/sys/class/hwmon"

    @model_validator(mode="after")
    def _one(self) -> HwmonConfig:
        if (self.label is None) == (self.input is None):
            raise ValueError("set label (e.g. 'Package id 0') or input (e.g. 'temp1'), not both")
        return self


class ThermalConfig(Strict):
    type: str
    root: str = "/sys/class/thermal"


class LmSensorsConfig(Strict):
    chip: str
    feature: str
    subfeature: str | None = None
    argv: list[str] = ["/usr/bin/sensors", "-j"]


class IpmiConfig(Strict):
    name: str
    argv: list[str] = ["/usr/bin/ipmitool", "sdr", "type", "Temperature"]


class SensorCommand(Strict):
    argv: list[str] = Field(min_length=1)


class MqttSensor(Strict):
    topic: str
    field: str | None = None  # dot path into a JSON payload; plain value when absent

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "+" in v or "#" in v or "\0" in v:
            raise ValueError(f"topic must be one concrete topic, no wildcards: {v!r}")
        return v


_SOURCES = ("hwmon", "thermal", "lm_sensors", "ipmi", "command", "mqtt")


class SensorConfig(Strict):
    description: str = ""
    kind: Literal["number", "bool"] = "number"
    unit: str = ""
    hwmon: HwmonConfig | None = None
    thermal: ThermalConfig | None = None
    lm_sensors: LmSensorsConfig | None = None
    ipmi: IpmiConfig | None = None
    command: SensorCommand | None = None
    mqtt: MqttSensor | None = None
    interval: Duration = 10.0
    timeout: Duration = 5.0
    stale_after: Duration = 60.0
    warn: float | None = None
    critical: float | None = None
    direction: Literal["above", "below"] = "above"
    hysteresis: float = Field(1.0, ge=0)
    window: Duration = 300.0
    warn_when: bool | None = None
    critical_when: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SensorConfig:
        given = [k for k in _SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one source: {', '.join(_SOURCES)}")
        for k in ("argv",):
            for src in (self.lm_sensors, self.ipmi, self.command):
                argv = getattr(src, k, None)
                if argv is not None and (not argv or not argv[0].startswith("/")):
                    raise ValueError("program must be an absolute path (no PATH lookup)")
        if self.kind == "bool":
            if self.warn is not None or self.critical is not None:
                raise ValueError("bool sensors use warn_when/critical_when, not warn/critical")
        else:
            if self.warn_when is not None or self.critical_when is not None:
                raise ValueError("warn_when/critical_when are for kind: bool")
            if self.warn is not None and self.critical is not None:
                ordered = (
                    self.warn < self.critical
                    if self.direction == "above"
                    else (self.warn > self.critical)
                )
                if not ordered:
                    side = "below" if self.direction == "above" else "above"
                    raise ValueError(f"warn must be {side} critical (direction {self.direction})")
        if self.mqtt is None and self.stale_after <= self.interval:
            raise ValueError("stale_after must be longer than interval")
        return self

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

    def source(self) -> Source:
        from trunkguard.watch import cooling

        if self.hwmon is not None:
            h = self.hwmon
            return cooling.HwmonSource(h.chip, h.label, h.input, h.root)
        if self.thermal is not None:
            return cooling.ThermalSource(self.thermal.type, self.thermal.root)
        if self.lm_sensors is not None:
            m = self.lm_sensors
            return cooling.LmSensorsSource(m.chip, m.feature, m.subfeature, tuple(m.argv))
        if self.ipmi is not None:
            return cooling.IpmiSource(self.ipmi.name, tuple(self.ipmi.argv))
        if self.command is not None:
            return cooling.CommandSource(tuple(self.command.argv))
        assert self.mqtt is not None
        return cooling.MqttSource(self.mqtt.topic, self.mqtt.field)


class RuleConfig(Strict):
    """One evacuation rule: any_of / all_of of rules, or a match over sensors or targets."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    any_of: list[RuleConfig] | None = Field(None, min_length=1)
    all_of: list[RuleConfig] | None = Field(None, min_length=1)
    sensors: list[str] | None = Field(None, min_length=1)
    targets: list[str] | None = Field(None, min_length=1)
    is_: str | None = Field(None, alias="is")
    at_least: Literal["all"] | Annotated[int, Field(strict=True, ge=1)] = 1
    critical_within: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> RuleConfig:
        kinds = [k for k in ("any_of", "all_of", "sensors", "targets") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a rule is exactly one of any_of, all_of, sensors or targets")
        if self.sensors:
            if (self.is_ is None) == (self.critical_within is None):
                raise ValueError(
                    "a sensor rule needs 'is' (warn, critical, stale) or critical_within"
                )
            if self.is_ is not None and self.is_ not in SENSOR_STATES:
                raise ValueError(f"is must be one of {', '.join(SENSOR_STATES)} for sensors")
        elif self.targets:
            if self.is_ not in TARGET_STATES or self.critical_within is not None:
                raise ValueError(f"a target rule needs is: {' or '.join(TARGET_STATES)}")
        elif self.is_ is not None or self.critical_within is not None:
            raise ValueError("is/critical_within belong to a sensors or targets rule")
        names = self.sensors or self.targets or []
        if isinstance(self.at_least, int) and names and self.at_least > len(names):
            raise ValueError(f"at_least {self.at_least} is more than the {len(names)} listed")
        return self

    def rule(self) -> Rule:
        if self.any_of:
            return AnyOf(tuple(r.rule() for r in self.any_of))
        if self.all_of:
            return AllOf(tuple(r.rule() for r in self.all_of))
        return Match(
            tuple(self.sensors or ()),
            tuple(self.targets or ()),
            self.is_,
            None if self.at_least == "all" else self.at_least,
            self.critical_within,
        )

    def walk(self, loc: Loc) -> Iterator[tuple[Loc, RuleConfig]]:
        yield loc, self
        for key in ("any_of", "all_of"):
            for i, r in enumerate(getattr(self, key) or ()):
                yield from r.walk((*loc, key, i))


class EvacuationConfig(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    when: RuleConfig | None = None
    hold: Duration = 300.0
    return_: Literal["auto", "manual"] = Field("auto", alias="return")

    def spec(self) -> SiteSpec:
        return SiteSpec(None if self.when is None else self.when.rule(), self.hold, self.return_)


class KamailioSettings(Strict):
    rpc: str  # http://127.0.0.1:5071/RPC or unix:/run/kamailio/kamailio_rpc.sock
    timeout: Duration = 2.0
    off_state: Literal["disabled", "inactive"] = "disabled"

    @field_validator("rpc")
    @classmethod
    def _rpc(cls, v: str) -> str:
        from trunkguard.act.kamailio import parse_rpc

        parse_rpc(v)
        return v


def _mode(v: object) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3}", v):
        return int(v, 8)
    raise ValueError(f'mode must be octal in quotes, e.g. "0644" (got {v!r})')


class TemplateConfig(Strict):
    name: Name
    template: str
    output: str
    reload: list[str] | None = Field(None, min_length=1)
    timeout: Duration = 10.0
    mode: Annotated[int, BeforeValidator(_mode)] = 0o644

    @field_validator("reload")
    @classmethod
    def _absolute(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v[0].startswith("/"):
            raise ValueError(f"program must be an absolute path, got {v[0]!r} (no PATH lookup)")
        return v


class ActuatorSettings(Strict):
    drift_interval: Duration = 10.0
    backoff_initial: Duration = 0.1
    backoff_max: Duration = 10.0
    kamailio: KamailioSettings | None = None
    templates: list[TemplateConfig] = []


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


class Config(Strict):
    site: Name
    node: Name
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: str | None = None
    control: ControlConfig = Field(default_factory=ControlConfig)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    trunks: dict[Name, TrunkConfig] = {}
    links: dict[Name, LinkConfig] = {}
    sensors: dict[Name, SensorConfig] = {}
    evacuation: EvacuationConfig = Field(default_factory=EvacuationConfig)
    routes: dict[Name, RouteGroupConfig] = {}
    actuators: ActuatorSettings = Field(default_factory=ActuatorSettings)
    mqtt: MqttConfig | None = None
    metrics: MetricsConfig | None = Field(default_factory=MetricsConfig)

    def probe_for(self, trunk: str) -> ProbeSettings:
        """The trunk's effective probe settings: its overrides over the global defaults."""
        t = self.trunks[trunk]
        dumped = t.model_dump(include=set(ProbeOverrides.model_fields))
        return self.probe.model_copy(update={k: v for k, v in dumped.items() if v is not None})

    def quorums(self) -> dict[str, Quorum]:
        return {f"trunk:{n}": Quorum.parse(t.healthy_when) for n, t in self.trunks.items()}

    def tls_for(self, trunk: str) -> TlsConfig | None:
        return self.trunks[trunk].tls or self.sip.tls

    def health_params(self) -> dict[str, HealthParams]:
        out = {}
        for name in self.trunks:
            p = self.probe_for(name)
            out[f"trunk:{name}"] = HealthParams(p.interval, p.fast_interval, p.rise, p.fall)
        return out

    def inputs(self) -> Inputs:
        return Inputs(
            links={
                f"link:{n}": LinkParams(lc.up_hold, lc.down_hold) for n, lc in self.links.items()
            },
            depends={
                f"trunk:{n}": tuple(t.depends_on) for n, t in self.trunks.items() if t.depends_on
            },
            sensors={n: sc.core_spec(n) for n, sc in self.sensors.items()},
            site=self.evacuation.spec(),
        )

    def link_specs(self) -> list[LinkSpec]:
        return [lc.spec(n) for n, lc in self.links.items()]

    def sensor_plans(self) -> list[SensorPlan]:
        from trunkguard.watch.cooling import SensorPlan

        return [
            SensorPlan(n, sc.source(), sc.kind, sc.interval, sc.timeout)
            for n, sc in self.sensors.items()
        ]

    def group_specs(self) -> list[GroupSpec]:
        return [
            GroupSpec(
                name,
                tuple(PathSpec(p.name, tuple(p.requires), p.remote) for p in g.paths),
                g.failback,
                g.hold,
                g.mode,
            )
            for name, g in self.routes.items()
        ]


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


Loc = tuple[str | int, ...]


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Lines:
    """Key path -> line number, from the YAML node tree (and duplicate-key detection)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int]] = []
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                key = str(k.value)
                if key in seen:
                    self.duplicates.append(((*loc, key), k.start_mark.line + 1))
                seen.add(key)
                self.lines[(*loc, key)] = k.start_mark.line + 1
                self._walk(v, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*loc, i))

    def line(self, loc: Loc) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def problem(self, loc: Loc, msg: str) -> str:
        line = self.line(loc)
        return f"{_fmt_loc(loc)}: {msg}" + (f" (line {line})" if line else "")


def _pydantic_msg(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return str(msg)


def _cross_checks(cfg: Config, lines: _Lines) -> list[str]:
    """Checks that span sections: references between targets and route groups."""
    problems: list[str] = []
    owner: dict[tuple[str, int, int], str] = {}
    known = {f"trunk:{n}" for n in cfg.trunks} | {f"link:{n}" for n in cfg.links}
    links = {f"link:{n}" for n in cfg.links}
    for name, t in cfg.trunks.items():
        for j, dep in enumerate(t.depends_on):
            if dep not in links:
                msg = f"unknown link {dep!r} (write link:NAME, one of the links section)"
                problems.append(lines.problem(("trunks", name, "depends_on", j), msg))
    for name, sc in cfg.sensors.items():
        if sc.mqtt is not None and cfg.mqtt is None:
            msg = "an mqtt sensor needs the mqtt section (the broker to subscribe on)"
            problems.append(lines.problem(("sensors", name, "mqtt"), msg))
    when = cfg.evacuation.when
    if when is not None:
        for rloc, r in when.walk(("evacuation", "when")):
            for j, sname in enumerate(r.sensors or ()):
                if sname not in cfg.sensors:
                    msg = f"unknown sensor {sname!r}"
                    problems.append(lines.problem((*rloc, "sensors", j), msg))
            for j, tname in enumerate(r.targets or ()):
                if tname not in known:
                    msg = f"unknown target {tname!r} (trunk:NAME or link:NAME)"
                    problems.append(lines.problem((*rloc, "targets", j), msg))
        if not any(p.remote for g in cfg.routes.values() for p in g.paths):
            msg = "no route group has a path with remote: true to evacuate to"
            problems.append(lines.problem(("evacuation", "when"), msg))
    for name in cfg.trunks:
        eff = cfg.probe_for(name)
        if eff.fast_interval > eff.interval:
            msg = f"fast_interval {eff.fast_interval:g}s is longer than interval {eff.interval:g}s"
            problems.append(lines.problem(("trunks", name), msg))
    rule_owner: dict[tuple[object, ...], str] = {}
    for gname, g in cfg.routes.items():
        seen: set[str] = set()
        keysets: list[tuple[int, frozenset[tuple[object, ...]]]] = []
        for i, p in enumerate(g.paths):
            loc: Loc = ("routes", gname, "paths", i)
            if p.name in seen:
                problems.append(lines.problem((*loc, "name"), f"duplicate path name {p.name!r}"))
            seen.add(p.name)
            for j, req in enumerate(p.requires):
                kind, _, _ = req.partition(":")
                if kind not in TARGET_KINDS:
                    kinds = ", ".join(TARGET_KINDS)
                    msg = f"bad target {req!r}: use kind:name with kind one of {kinds}"
                    problems.append(lines.problem((*loc, "requires", j), msg))
                elif req not in known:
                    problems.append(lines.problem((*loc, "requires", j), f"unknown target {req!r}"))
            keys = frozenset(route_key(r.spec()) for r in p.actions.netlink)
            keysets.append((i, keys))
            for key in keys:
                # Two groups steering one route would undo each other for ever.
                other = owner.setdefault(key, gname)
                if other != gname:
                    loc = ("routes", gname, "paths", i, "actions", "netlink")
                    msg = f"route {key[0]} (table {key[1]}) is also steered by group {other}"
                    problems.append(lines.problem(loc, msg))
        for i, p in enumerate(g.paths):
            for j, rc in enumerate(p.actions.rules):
                other = rule_owner.setdefault(rule_key(rc.spec()), gname)
                if other != gname:
                    loc = ("routes", gname, "paths", i, "actions", "rules", j)
                    msg = f"rule priority {rc.priority} is also steered by group {other}"
                    problems.append(lines.problem(loc, msg))
        # Replace-only routing: every path must own the same prefixes, or a failover
        # would leave the old path's extra routes behind. With policy rules each path
        # may have its own table: the rule decides, stale routes elsewhere do no harm.
        routed = [(i, k) for i, k in keysets if k]
        has_rules = any(p.actions.rules for p in g.paths)
        if routed and not has_rules and any(k != routed[0][1] for _, k in keysets):
            first = routed[0][0]
            for i, k in keysets:
                if k != routed[0][1]:
                    loc = ("routes", gname, "paths", i, "actions", "netlink")
                    msg = f"must route the same prefixes (dst/table/metric) as paths[{first}]"
                    problems.append(lines.problem(loc, msg))
    ds_owner: dict[tuple[int, str], str] = {}
    for gname, g in cfg.routes.items():
        for i, p in enumerate(g.paths):
            ka = p.actions.kamailio
            if ka is None:
                continue
            for uri in ka.active:
                # Two groups steering one destination would undo each other for ever.
                other = ds_owner.setdefault((ka.setid, uri), gname)
                if other != gname:
                    loc = ("routes", gname, "paths", i, "actions", "kamailio")
                    msg = f"destination {uri} (set {ka.setid}) is also steered by group {other}"
                    problems.append(lines.problem(loc, msg))
    uses_kamailio = any(p.actions.kamailio for g in cfg.routes.values() for p in g.paths)
    if uses_kamailio and cfg.actuators.kamailio is None:
        msg = "paths use kamailio actions: set actuators.kamailio.rpc"
        problems.append(lines.problem(("actuators",), msg))
    names: set[str] = set()
    for i, tc in enumerate(cfg.actuators.templates):
        loc = ("actuators", "templates", i)
        if tc.name in names:
            problems.append(lines.problem((*loc, "name"), f"duplicate template name {tc.name!r}"))
        names.add(tc.name)
        from trunkguard.act.template import check_template

        if not Path(tc.template).is_file():
            problems.append(lines.problem((*loc, "template"), f"cannot read {tc.template}"))
        elif (err := check_template(tc.template)) is not None:
            problems.append(lines.problem((*loc, "template"), err))
        if not Path(tc.output).parent.is_dir():
            msg = f"directory {Path(tc.output).parent} does not exist"
            problems.append(lines.problem((*loc, "output"), msg))
    tls_places: list[tuple[Loc, TlsConfig]] = [
        (("trunks", n, "tls"), t.tls) for n, t in cfg.trunks.items() if t.tls
    ]
    if cfg.sip.tls:
        tls_places.append((("sip", "tls"), cfg.sip.tls))
    for where, tls in tls_places:
        for fname, path in tls.files():
            if not Path(path).is_file():
                problems.append(lines.problem((*where, fname), f"cannot read {path}"))
    if cfg.mqtt and cfg.mqtt.password_file and not Path(cfg.mqtt.password_file).is_file():
        problems.append(
            lines.problem(("mqtt", "password_file"), f"cannot read {cfg.mqtt.password_file}")
        )
    return problems


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        # One parse (libyaml when present): the node tree gives line numbers and the data.
        root = yaml.compose(text, Loader=_LOADER)
        data = None if root is None else yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{source}: YAML syntax error: {problem}{where}"]) from None
    lines = _Lines(root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: top level must be a mapping of keys"])
    problems = [lines.problem(loc, "duplicate key") for loc, _ in lines.duplicates]
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        problems += [lines.problem(tuple(err["loc"]), _pydantic_msg(err)) for err in e.errors()]
        raise ConfigError(problems) from None
    problems += _cross_checks(cfg, lines)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"]) from None
    return parse_config(text, str(path))
