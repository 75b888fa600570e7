"""What every benchmark shares: percentiles, the machine it ran on, the result file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))]


def machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def write_result(name: str, doc: dict[str, Any]) -> Path:
    res = ROOT / "bench" / "results" / f"{name}.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {res.relative_to(ROOT)}")
    return res
