"""Kernel routes and policy rules per path, through netlink (path actions `netlink`, `rules`)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field, field_validator, model_validator

from trunkguard.act.base import Actuator
from trunkguard.act.netlink import NetlinkActuator, RouteSpec, RuleSpec, route_key, rule_key
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Lines, Loc, Strict

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trunkguard.config import Config


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


class Netlink(Feature):
    name = "netlink"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems: list[str] = []
        owner: dict[tuple[object, ...], str] = {}
        rule_owner: dict[tuple[object, ...], str] = {}
        for gname, g in cfg.routes.items():
            keysets: list[tuple[int, frozenset[tuple[object, ...]]]] = []
            for i, p in enumerate(g.paths):
                loc: Loc = ("routes", gname, "paths", i, "actions")
                keys = frozenset(route_key(r.spec()) for r in p.actions.netlink)
                keysets.append((i, keys))
                for key in keys:
                    # Two groups steering one route would undo each other for ever.
                    other = owner.setdefault(key, gname)
                    if other != gname:
                        msg = f"route {key[0]} (table {key[1]}) is also steered by group {other}"
                        problems.append(lines.problem((*loc, "netlink"), msg))
                for j, rc in enumerate(p.actions.rules):
                    other = rule_owner.setdefault(rule_key(rc.spec()), gname)
                    if other != gname:
                        msg = f"rule priority {rc.priority} is also steered by group {other}"
                        problems.append(lines.problem((*loc, "rules", j), msg))
            # Replace-only routing: every path must own the same prefixes, or a failover
            # would leave the old path's extra routes behind. With policy rules each path
            # may have its own table: the rule decides, stale routes elsewhere do no harm.
            routed = [(i, k) for i, k in keysets if k]
            has_rules = any(p.actions.rules for p in g.paths)
            if routed and not has_rules:
                first, want = routed[0]
                for i, k in keysets:
                    if k != want:
                        loc = ("routes", gname, "paths", i, "actions", "netlink")
                        msg = f"must route the same prefixes (dst/table/metric) as paths[{first}]"
                        problems.append(lines.problem(loc, msg))
        return problems

    def actuators(self, cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
        routes: dict[tuple[str, str], list[RouteSpec]] = {}
        rules: dict[tuple[str, str], list[RuleSpec]] = {}
        for gname, g in cfg.routes.items():
            with_rules = any(q.actions.rules for q in g.paths)
            for p in g.paths:
                if p.actions.netlink:
                    routes[(gname, p.name)] = [r.spec() for r in p.actions.netlink]
                if with_rules:  # every path, so switching to one clears the others' rules
                    rules[(gname, p.name)] = [r.spec() for r in p.actions.rules]
        return [NetlinkActuator("netlink", routes, rules)] if routes or rules else []

    def build(self, ctx: Context) -> Parts:
        return Parts(actuators=self.actuators(ctx.cfg, ctx.env))


FEATURE = Netlink()
