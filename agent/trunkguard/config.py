"""Configuration: YAML validated by pydantic, every problem reported with key path and line.

Each section's model belongs to the feature that uses it (trunkguard/features/);
this module assembles them into one Config, runs the features' cross-section
checks, and builds the core's spec from the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from trunkguard.core.engine import CoreSpec
from trunkguard.core.ids import Kind, TargetId, link, peer, trunk
from trunkguard.features import FEATURES
from trunkguard.features.calls import CallConfig
from trunkguard.features.drills import DrillsConfig
from trunkguard.features.http import ControlConfig, MetricsConfig
from trunkguard.features.links import LinkConfig
from trunkguard.features.mqtt import MqttConfig
from trunkguard.features.notify import NotifierConfig
from trunkguard.features.peers import PeerConfig, TakeoverConfig
from trunkguard.features.remote import CommandsConfig
from trunkguard.features.routes import ActuatorSettings, RouteGroupConfig
from trunkguard.features.sensors import SensorConfig
from trunkguard.features.site import EvacuationConfig
from trunkguard.features.trunks import ProbeSettings, SipSettings, TrunkConfig
from trunkguard.schema import Lines, Name, Strict, parse_duration

__all__ = ["DEFAULT_PATH", "Config", "ConfigError", "load_config", "parse_config", "parse_duration"]

DEFAULT_PATH = "/etc/trunkguard/trunkguard.yaml"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Aliases share nodes; expanded, a "billion laughs" file has 10^9 of them. 10,000 trunks
# take about 60,000.
MAX_NODES = 1_000_000


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
    calls: dict[Name, CallConfig] = {}
    peers: dict[Name, PeerConfig] = {}
    takeover: TakeoverConfig = Field(default_factory=TakeoverConfig)
    routes: dict[Name, RouteGroupConfig] = {}
    actuators: ActuatorSettings = Field(default_factory=ActuatorSettings)
    mqtt: MqttConfig | None = None
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    drills: DrillsConfig = Field(default_factory=DrillsConfig)
    notify: dict[Name, NotifierConfig] = {}
    metrics: MetricsConfig | None = Field(default_factory=MetricsConfig)

    def targets(self) -> set[TargetId]:
        """Every target a path or rule may name."""
        return (
            {trunk(n) for n in self.trunks}
            | {link(n) for n in self.links}
            | {peer(n) for n in self.peers}
            | {TargetId(Kind.CALL, n) for n in self.calls}
        )

    def core_spec(self) -> CoreSpec:
        spec = CoreSpec()
        for f in FEATURES:
            f.core(self, spec)
        return spec


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have with every alias expanded, computed without
    expanding (each shared node counted once per use); ValueError past MAX_NODES or
    for an alias that contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ValueError(f"an alias contains itself (line {node.start_mark.line + 1})")
        open_.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(v) for v in node.value)
        if n > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES:,} values once aliases are expanded")
        open_.discard(key)
        sizes[key] = n
        return n

    return size(root)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        # One parse (libyaml when present): the node tree gives line numbers and the data.
        root = yaml.compose(text, Loader=_LOADER)
        if root is not None:
            _expanded_size(root)
        data = None if root is None else yaml.constructor.SafeConstructor().construct_document(root)
    except ValueError as e:
        raise ConfigError([f"{source}: refused: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: refused: nested too deeply"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{source}: YAML syntax error: {problem}{where}"]) from None
    lines = Lines(root)
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
    for f in FEATURES:
        problems += f.check(cfg, lines)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"]) from None
    return parse_config(text, str(path))
