"""The operator's side: keys on disk, signed payloads, the fleet's verdict on a node,
and one-line CLI errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from trunkguard.cli import main
from trunkguard.noc import Node, keygen, print_fleet, signed
from trunkguard.signing import public_key, verify


def test_keygen_writes_a_private_key_only_we_can_read_and_never_overwrites(
    tmp_path: Path,
) -> None:
    key, pub, public = keygen(str(tmp_path / "alice"))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().strip() == public
    with pytest.raises(FileExistsError):
        keygen(str(tmp_path / "alice"))
    cid, payload = signed(str(key), None, "site-a", None, "failback", {"group": "pstn"})
    doc = json.loads(payload)
    now = doc["body"]["issued_at"]
    body = verify(payload, {"alice": public_key(public)}, ("site-a/n1", "site-a"), now, 0)
    assert body.id == cid and dict(body.args) == {"group": "pstn"}
    assert doc["body"]["key_id"] == "alice" and doc["body"]["aud"] == "site-a"
    # Counters only go up, even within one microsecond.
    c1 = json.loads(signed(str(key), None, "s", "n", "status", {})[1])["body"]["counter"]
    c2 = json.loads(signed(str(key), None, "s", "n", "status", {})[1])["body"]["counter"]
    assert c2 > c1


def test_fleet_marks_a_node_without_a_live_heartbeat_stale() -> None:
    state = {"published_at": "2026-01-01T00:00:00.000Z", "routes": {"pstn": {"active": "a"}}}
    up = Node("s", "n", {"status": "online", "epoch": 5}, {"epoch": 5}, state)
    assert up.view(1767225610.0)["health"] == "up"
    assert up.view(1767225610.0)["data_age_s"] == 10.0
    frozen = Node("s", "n", {"status": "online", "epoch": 5}, {}, state)
    assert frozen.view(0)["health"] == "stale" and frozen.view(0)["heartbeat"] == "missing"
    old_beat = Node("s", "n", {"status": "online", "epoch": 6}, {"epoch": 5}, state)
    assert old_beat.view(0)["health"] == "stale"
    dead = Node("s", "n", {"status": "offline", "epoch": 5}, {}, state)
    assert dead.view(0)["health"] == "offline"


def test_fleet_shows_each_nodes_alarms(capsys: pytest.CaptureFixture[str]) -> None:
    alarms = {"alarms": ["path b of pstn answers OPTIONS but fails calls (call:via-b)"]}
    n = Node("s", "n", {"status": "online", "epoch": 5}, {"epoch": 5}, {}, alarms)
    print_fleet([n.view(0)])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("s/n ") and "ALARM: path b of pstn answers OPTIONS" in out[2]


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["failover", "g", "p", "--site", "a", "--broker", "mqtt://127.0.0.1:1"],
            "--key is required",
        ),
        (["fleet"], "--broker is required"),
        (["fleet", "--broker", "http://x"], "broker must be"),
        (["fleet", "--broker", "mqtt://127.0.0.1:1"], "broker:"),
        (
            ["status", "--site", "a", "--key", "/nonexistent.key", "--broker", "mqtt://x"],
            "nonexistent",
        ),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], want: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("trunkguard: ") and want in err and err.count("\n") == 1, err
