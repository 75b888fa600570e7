"""Route groups: ordered paths, what each requires, and how routing is carried out
(sections `routes` and `actuators`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from trunkguard.core.engine import CoreSpec
from trunkguard.core.policy import Failback, GroupMode, GroupSpec, PathSpec
from trunkguard.features.base import Feature
from trunkguard.features.command import CommandAction
from trunkguard.features.kamailio import DispatcherAction, KamailioSettings
from trunkguard.features.netlink import NetlinkRoute, NetlinkRule
from trunkguard.features.templates import TemplateConfig
from trunkguard.schema import Duration, Lines, Loc, Name, Strict, TargetRef

if TYPE_CHECKING:
    from trunkguard.config import Config


class Actions(Strict):
    netlink: list[NetlinkRoute] = []
    rules: list[NetlinkRule] = []
    command: CommandAction | None = None
    kamailio: DispatcherAction | None = None


VarValue = str | int | float | bool


class PathConfig(Strict):
    name: Name
    requires: list[TargetRef] = []
    remote: bool = False
    serves: Name | None = None  # a peer site: active only while we take over its calls
    verified_by: TargetRef | None = None  # call:NAME, the synthetic call that proves it
    actions: Actions = Field(default_factory=Actions)
    vars: dict[str, VarValue] = {}  # for templates: routes.<group>.vars.<key>


class RouteGroupConfig(Strict):
    failback: Failback = Failback.AUTO
    hold: Duration = 30.0
    # multipath: every qualifying path at once (kernel routes only, weighted nexthops)
    mode: GroupMode = GroupMode.FAILOVER
    paths: list[PathConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _multipath_routes_only(self) -> RouteGroupConfig:
        if self.mode is GroupMode.MULTIPATH:
            for p in self.paths:
                if p.actions.command is not None or p.actions.kamailio is not None:
                    raise ValueError(
                        f"path {p.name}: a multipath group steers kernel routes only "
                        "(netlink actions), not command or kamailio"
                    )
        return self


class ActuatorSettings(Strict):
    drift_interval: Duration = 10.0
    backoff_initial: Duration = 0.1
    backoff_max: Duration = 10.0
    kamailio: KamailioSettings | None = None
    templates: list[TemplateConfig] = []


class Routes(Feature):
    name = "routes"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems: list[str] = []
        known = cfg.targets()
        for gname, g in cfg.routes.items():
            seen: set[str] = set()
            for i, p in enumerate(g.paths):
                loc: Loc = ("routes", gname, "paths", i)
                if p.name in seen:
                    msg = f"duplicate path name {p.name!r}"
                    problems.append(lines.problem((*loc, "name"), msg))
                seen.add(p.name)
                for j, req in enumerate(p.requires):
                    if req not in known:
                        msg = f"unknown target {str(req)!r}"
                        problems.append(lines.problem((*loc, "requires", j), msg))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        for name, g in cfg.routes.items():
            paths = tuple(
                PathSpec(p.name, tuple(p.requires), p.remote, p.serves, p.verified_by)
                for p in g.paths
            )
            spec.groups.append(GroupSpec(name, paths, g.failback, g.hold, g.mode))


FEATURE = Routes()
