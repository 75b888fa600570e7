"""`trunkguard lab` as a new user runs it: exit 0, the timeline, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_lab_prints_failover_and_failback_and_cleans_up() -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("trunkguard-lab-*"))
    r = subprocess.run(
        [sys.executable, "-m", "trunkguard", "lab", "--hold", "1s", "--outage", "2s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.split("Timeline (ms from the outage):")[1]
    order = [
        "carrier-a goes silent",
        "first failed probe of carrier-a",
        "trunk:carrier-a up -> down",
        "route outbound: carrier-a -> carrier-b (failover",
        "route outbound applied: carrier-b",
        "carrier-a answers again",
        "trunk:carrier-a down -> up",
        "route outbound: carrier-b -> carrier-a (failback",
        "route outbound applied: carrier-a",
    ]
    positions = [out.index(line) for line in order]
    assert positions == sorted(positions), out
    assert "routing file says: carrier-b" in r.stdout and "Traceback" not in r.stderr
    assert set(tmp.glob("trunkguard-lab-*")) == before
