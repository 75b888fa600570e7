"""Site evacuation: a rule over sensors and targets moves every route group with
remote paths to them, and back after `hold` (section `evacuation`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from trunkguard.core.engine import CoreSpec
from trunkguard.core.site import SENSOR_STATES, TARGET_STATES, AllOf, AnyOf, Match, Rule, SiteSpec
from trunkguard.features.base import Feature
from trunkguard.schema import Duration, Lines, Loc, Strict, TargetRef

if TYPE_CHECKING:
    from trunkguard.config import Config


class RuleConfig(Strict):
    """One evacuation rule: any_of / all_of of rules, or a match over sensors or targets."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    any_of: list[RuleConfig] | None = Field(None, min_length=1)
    all_of: list[RuleConfig] | None = Field(None, min_length=1)
    sensors: list[str] | None = Field(None, min_length=1)
    targets: list[TargetRef] | None = Field(None, min_length=1)
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


class Site(Feature):
    name = "evacuation"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        when = cfg.evacuation.when
        if when is None:
            return []
        problems = []
        known = cfg.targets()
        for rloc, r in when.walk(("evacuation", "when")):
            for j, sname in enumerate(r.sensors or ()):
                if sname not in cfg.sensors:
                    problems.append(
                        lines.problem((*rloc, "sensors", j), f"unknown sensor {sname!r}")
                    )
            for j, tid in enumerate(r.targets or ()):
                if tid not in known:
                    msg = f"unknown target {str(tid)!r} (trunk:NAME or link:NAME)"
                    problems.append(lines.problem((*rloc, "targets", j), msg))
        if not any(p.remote for g in cfg.routes.values() for p in g.paths):
            msg = "no route group has a path with remote: true to evacuate to"
            problems.append(lines.problem(("evacuation", "when"), msg))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        spec.site = cfg.evacuation.spec()


FEATURE = Site()
