"""Identities and their text forms, in one place.

A target is (kind, name) and, for one resolved destination of a trunk, a `dest`:
"trunk:carrier-a", "link:uplink-a", "trunk:carrier-a/192.0.2.10:5060". A route group's
active paths are one name, or several joined with "+" in multipath mode ("a+b").
Nothing else parses or builds these strings: config, persistence, MQTT and the CLI
all go through parse_target() / str() and Paths.parse() / str().
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    TRUNK = "trunk"
    LINK = "link"
    PEER = "peer"  # another site, seen through MQTT
    CALL = "call"  # a synthetic call check


KINDS = ", ".join(k.value for k in Kind)


class TargetId(NamedTuple):
    """A tuple, so hashing it on the probe path costs what hashing a string does."""

    kind: Kind
    name: str
    dest: str = ""

    def __str__(self) -> str:
        base = f"{self.kind.value}:{self.name}"
        return f"{base}/{self.dest}" if self.dest else base

    def at(self, dest: str) -> TargetId:
        """One resolved destination of this target."""
        return TargetId(self.kind, self.name, dest)


def trunk(name: str) -> TargetId:
    return TargetId(Kind.TRUNK, name)


def link(name: str) -> TargetId:
    return TargetId(Kind.LINK, name)


def peer(site: str) -> TargetId:
    return TargetId(Kind.PEER, site)


def parse_target(text: object) -> TargetId:
    """ "kind:name" (or "kind:name/dest"); ValueError with a one-line reason otherwise."""
    if isinstance(text, TargetId):
        return text
    if not isinstance(text, str):
        raise ValueError(f"target must be text like trunk:NAME, got {text!r}")
    kind, sep, rest = text.partition(":")
    name, _, dest = rest.partition("/")
    if not sep or kind not in Kind.__members__.values() or not name:
        raise ValueError(f"bad target {text!r}: use kind:name with kind one of {KINDS}")
    return TargetId(Kind(kind), name, dest)


class Paths(tuple[str, ...]):
    """A route group's active paths, most preferred first: one, or several (multipath)."""

    __slots__ = ()

    @classmethod
    def of(cls, names: Iterable[str]) -> Paths:
        return cls(dict.fromkeys(names))

    @classmethod
    def parse(cls, text: str) -> Paths:
        return cls.of(p for p in text.split(SEP) if p)

    def __str__(self) -> str:
        return SEP.join(self)

    def __repr__(self) -> str:
        return f"Paths({str(self)!r})"


SEP = "+"
