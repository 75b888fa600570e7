"""Building blocks of the config sections: strict models, durations, names, programs,
target references, and where in the YAML file a key path is (for one-line problems).

Durations are strings with a unit ("500ms", "2s", "1m", "1h"): a bare number is
rejected because "timeout: 500" is ambiguous between seconds and milliseconds, and
guessing wrong on a failover agent is an outage.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from trunkguard.core.ids import TargetId, parse_target

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_duration(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, str):
        raise ValueError(f"duration needs a unit, e.g. '500ms', '2s' or '1m' (got {v!r})")
    m = _DURATION.match(v)
    if not m:
        raise ValueError(f"bad duration {v!r}: use a number and ms, s, m, h or d, e.g. '500ms'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(
            f"bad name {v!r}: use letters, digits, '.', '_' or '-' (max 63), starting alphanumeric"
        )
    return v


def _check_argv(v: list[str]) -> list[str]:
    if not v or not v[0].startswith("/"):
        first = v[0] if v else ""
        raise ValueError(f"program must be an absolute path, got {first!r} (no PATH lookup)")
    return v


def _check_ip(v: str) -> str:
    ipaddress.ip_address(v)
    return v


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
ZeroDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Name = Annotated[str, AfterValidator(_check_name)]
Argv = Annotated[list[str], Field(min_length=1), AfterValidator(_check_argv)]
IpAddress = Annotated[str, AfterValidator(_check_ip)]
TargetRef = Annotated[TargetId, BeforeValidator(parse_target), PlainSerializer(str)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Loc = tuple[str | int, ...]


def fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if not isinstance(part, int) and not part.isprintable():
            part = repr(part)  # a key with a newline must not break the one-line problem
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class Lines:
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
        return f"{fmt_loc(loc)}: {msg}" + (f" (line {line})" if line else "")
