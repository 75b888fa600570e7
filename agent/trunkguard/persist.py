"""Operator intent and last routing, kept across restarts in state_dir/state.json.

Written atomically (temp file, fsync, rename) so a crash mid-write leaves the old
file; a missing or unreadable file means "start with no memory", never a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from trunkguard.core.engine import Intent
from trunkguard.core.ids import Paths, parse_target

SCHEMA = 1


def load(state_dir: str | None) -> tuple[Intent, str | None]:
    """Returns the saved intent and, if the file was unusable, why."""
    if not state_dir:
        return Intent(), None
    path = Path(state_dir) / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Intent(), None
    except (OSError, ValueError) as e:
        return Intent(), f"ignoring {path}: {e}"
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return Intent(), f"ignoring {path}: unknown schema"
    try:
        return Intent(
            active={str(k): Paths.parse(str(v)) for k, v in dict(raw.get("active", {})).items()},
            pinned={str(k): str(v) for k, v in dict(raw.get("pinned", {})).items()},
            maintenance=frozenset(parse_target(t) for t in raw.get("maintenance", [])),
            evacuating=raw.get("evacuating") is True,
            evacuation_forced=raw.get("evacuation_forced") is True,
        ), None
    except (TypeError, ValueError) as e:
        return Intent(), f"ignoring {path}: {e}"


def save(state_dir: str | None, intent: Intent) -> None:
    if not state_dir:
        return
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    body = json.dumps(
        {
            "schema": SCHEMA,
            "active": {g: str(p) for g, p in intent.active.items()},
            "pinned": dict(intent.pinned),
            "maintenance": sorted(str(t) for t in intent.maintenance),
            "evacuating": intent.evacuating,
            "evacuation_forced": intent.evacuation_forced,
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
