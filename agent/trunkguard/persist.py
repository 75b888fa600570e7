"""Operator intent and last routing, kept across restarts in state_dir/state.json.

Written atomically (temp file, fsync, rename) so a crash mid-write leaves the old
file; a missing or unreadable file means "start with no memory", never a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 1


@dataclass
class Saved:
    active: dict[str, str] = field(default_factory=dict)
    pinned: dict[str, str] = field(default_factory=dict)
    maintenance: list[str] = field(default_factory=list)
    evacuating: bool = False
    evacuation_forced: bool = False


def load(state_dir: str | None) -> tuple[Saved, str | None]:
    """Returns the saved state and, if the file was unusable, why."""
    if not state_dir:
        return Saved(), None
    path = Path(state_dir) / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Saved(), None
    except (OSError, ValueError) as e:
        return Saved(), f"ignoring {path}: {e}"
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return Saved(), f"ignoring {path}: unknown schema"
    try:
        return Saved(
            active={str(k): str(v) for k, v in dict(raw.get("active", {})).items()},
            pinned={str(k): str(v) for k, v in dict(raw.get("pinned", {})).items()},
            maintenance=[str(t) for t in raw.get("maintenance", [])],
            evacuating=raw.get("evacuating") is True,
            evacuation_forced=raw.get("evacuation_forced") is True,
        ), None
    except (TypeError, ValueError) as e:
        return Saved(), f"ignoring {path}: {e}"


def save(state_dir: str | None, saved: Saved) -> None:
    if not state_dir:
        return
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    body = json.dumps(
        {
            "schema": SCHEMA,
            "active": saved.active,
            "pinned": saved.pinned,
            "maintenance": sorted(saved.maintenance),
            "evacuating": saved.evacuating,
            "evacuation_forced": saved.evacuation_forced,
        },
        indent=1,
        sort_keys=True,
    )
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "state.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
