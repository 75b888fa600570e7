"""Config files rendered from Jinja2 templates, then a reload (settings `actuators.templates`).

A template sees each decided group's active path(s), the first path's `vars` and
whether it is remote, plus the site and node names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator

from trunkguard.act.base import Actuator
from trunkguard.act.template import TemplateActuator, TemplateSpec, check_template
from trunkguard.core.ids import Paths
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Argv, Duration, Lines, Name, Strict

if TYPE_CHECKING:
    from trunkguard.config import Config


def _mode(v: object) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3}", v):
        return int(v, 8)
    raise ValueError(f'mode must be octal in quotes, e.g. "0644" (got {v!r})')


class TemplateConfig(Strict):
    name: Name
    template: str
    output: str
    reload: Argv | None = None
    timeout: Duration = 10.0
    mode: Annotated[int, BeforeValidator(_mode)] = 0o644

    def spec(self) -> TemplateSpec:
        reload = tuple(self.reload) if self.reload else None
        return TemplateSpec(self.template, self.output, reload, self.timeout, self.mode)


def template_context(cfg: Config) -> Callable[[Mapping[str, Paths]], Mapping[str, Any]]:
    """What a template sees: each decided group's active path, its vars and remoteness."""
    paths = {(g, p.name): p for g, gc in cfg.routes.items() for p in gc.paths}

    def context(desired: Mapping[str, Paths]) -> Mapping[str, Any]:
        routes = {}
        for g, active in desired.items():
            chosen = [paths[(g, n)] for n in active if (g, n) in paths]
            if chosen:  # a multipath group: the first (most preferred) path's vars
                routes[g] = {
                    "path": str(active),
                    "paths": [p.name for p in chosen],
                    "vars": dict(chosen[0].vars),
                    "remote": chosen[0].remote,
                }
        return {"routes": routes, "site": cfg.site, "node": cfg.node}

    return context


class Templates(Feature):
    name = "templates"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems: list[str] = []
        names: set[str] = set()
        for i, tc in enumerate(cfg.actuators.templates):
            loc = ("actuators", "templates", i)
            if tc.name in names:
                msg = f"duplicate template name {tc.name!r}"
                problems.append(lines.problem((*loc, "name"), msg))
            names.add(tc.name)
            if not Path(tc.template).is_file():
                problems.append(lines.problem((*loc, "template"), f"cannot read {tc.template}"))
            elif (err := check_template(tc.template)) is not None:
                problems.append(lines.problem((*loc, "template"), err))
            if not Path(tc.output).parent.is_dir():
                msg = f"directory {Path(tc.output).parent} does not exist"
                problems.append(lines.problem((*loc, "output"), msg))
        return problems

    def actuators(self, cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
        context = template_context(cfg)
        return [
            TemplateActuator(f"template:{t.name}", t.spec(), context, env=env)
            for t in cfg.actuators.templates
        ]

    def build(self, ctx: Context) -> Parts:
        return Parts(actuators=self.actuators(ctx.cfg, ctx.env))


FEATURE = Templates()
