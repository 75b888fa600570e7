"""What survives a restart, in state_dir: operator intent and last routing
(state.json), and the MQTT session epoch (epoch).

Written atomically (temp file, fsync, rename) so a crash mid-write leaves the old
file; a missing or unreadable file means "start with no memory", never a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
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
            takeovers=frozenset(str(p) for p in raw.get("takeovers", [])),
        ), None
    except (TypeError, ValueError) as e:
        return Intent(), f"ignoring {path}: {e}"


def next_epoch(state_dir: str | None) -> int:
    """A session epoch larger than any before it: the saved one plus one, and never
    below the wall clock in milliseconds (so a lost state_dir cannot reuse one).
    Saved before it is used; OSError if it cannot be."""
    last = 0
    if state_dir:
        try:
            last = int((Path(state_dir) / "epoch").read_text().strip())
        except (OSError, ValueError):
            last = 0  # missing or garbage: the clock floor below still moves forward
    epoch = max(last + 1, time.time_ns() // 1_000_000)
    if state_dir:
        _write(Path(state_dir), "epoch", f"{epoch}\n")
    return epoch


def load_counters(state_dir: str | None, name: str = "counters.json") -> dict[str, int]:
    """A saved map of whole numbers: the last counter accepted per signing key (signed
    commands), or when each scheduled drill last ran (drills.json)."""
    if not state_dir:
        return {}
    try:
        raw = json.loads((Path(state_dir) / name).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if type(v) is int}


def save_counters(
    state_dir: str | None, counters: dict[str, int], name: str = "counters.json"
) -> None:
    if state_dir:
        _write(Path(state_dir), name, json.dumps(counters, sort_keys=True))


def save(state_dir: str | None, intent: Intent) -> None:
    if not state_dir:
        return
    body = json.dumps(
        {
            "schema": SCHEMA,
            "active": {g: str(p) for g, p in intent.active.items()},
            "pinned": dict(intent.pinned),
            "maintenance": sorted(str(t) for t in intent.maintenance),
            "evacuating": intent.evacuating,
            "evacuation_forced": intent.evacuation_forced,
            "takeovers": sorted(intent.takeovers),
        },
        indent=1,
        sort_keys=True,
    )
    _write(Path(state_dir), "state.json", body)


def _write(d: Path, name: str, body: str) -> None:
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
