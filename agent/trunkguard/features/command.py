"""A program per path, run with argv only (path action `command`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trunkguard.act.base import Actuator
from trunkguard.act.command import CommandActuator, CommandSpec
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Argv, Duration, Strict

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trunkguard.config import Config


class CommandAction(Strict):
    argv: Argv
    verify: Argv | None = None
    timeout: Duration = 10.0

    def spec(self) -> CommandSpec:
        verify = tuple(self.verify) if self.verify else None
        return CommandSpec(tuple(self.argv), verify, self.timeout)


class Command(Feature):
    name = "command"

    def actuators(self, cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
        specs = {
            (g, p.name): p.actions.command.spec()
            for g, gc in cfg.routes.items()
            for p in gc.paths
            if p.actions.command is not None
        }
        return [CommandActuator("command", specs, env=env)] if specs else []

    def build(self, ctx: Context) -> Parts:
        return Parts(actuators=self.actuators(ctx.cfg, ctx.env))


FEATURE = Command()
