"""Config for peer sites and takeovers, and the wire format of what peers publish:
shapes, references, one-line problems; hostile payloads refused with a reason."""

from __future__ import annotations

import json

import pytest

from trunkguard.bus.mqtt import Received, valid_filter
from trunkguard.config import ConfigError, parse_config
from trunkguard.core.events import State
from trunkguard.core.ids import parse_target as T
from trunkguard.core.takeover import QuorumMode, Release
from trunkguard.features.peers import wire

SITE_B = """\
site: site-b
node: sbc1
mqtt: {host: 127.0.0.1, heartbeat: 500ms}
trunks:
  carrier: {uri: "sip:192.0.2.1"}
  site-a-sbc: {uri: "sip:198.51.100.1"}
peers:
  site-a: {confirm: [trunk:site-a-sbc], hold: 2m, release: manual}
  witness: {nodes: [w1], expiry: 5s}
takeover: {quorum: majority}
routes:
  a-numbers:
    paths:
      - {name: takeover, serves: site-a}
      - {name: standby}
  to-a:
    paths:
      - {name: via-a, requires: [peer:site-a]}
      - {name: local, requires: [trunk:carrier]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return e.value.problems


def test_peers_build_the_core_spec() -> None:
    spec = parse_config(SITE_B).core_spec()
    assert spec.session and spec.heartbeat_expiry == 1.5  # 3 x heartbeat
    a, w = spec.peers[T("peer:site-a")], spec.peers[T("peer:witness")]
    assert a.expiry == 1.5 and a.nodes == ()
    assert w.expiry == 5.0 and w.nodes == ("w1",)
    tk = spec.takeovers["site-a"]
    assert tk.confirm == (T("trunk:site-a-sbc"),) and tk.fence == 1.5  # default: the expiry
    assert tk.hold == 120.0 and tk.release is Release.MANUAL
    assert list(spec.takeovers) == ["site-a"]  # the witness serves nobody
    v = spec.voting
    assert v.me == "site-b" and v.quorum is QuorumMode.MAJORITY
    assert v.voters == ("site-a", "site-b", "witness")
    group = next(g for g in spec.groups if g.name == "a-numbers")
    assert group.paths[0].serves == "site-a"


@pytest.mark.parametrize(
    ("change", "want"),
    [
        (("takeover: {quorum: majority}", ""), None),  # fine without a quorum too
        (("mqtt: {host: 127.0.0.1, heartbeat: 500ms}", ""), "peers are seen through MQTT"),
        (("  witness: {nodes: [w1], expiry: 5s}", "  site-b: {}"), "a site is not its own peer"),
        (("serves: site-a", "serves: site-c"), "unknown peer 'site-c'"),
        (
            ("{confirm: [trunk:site-a-sbc], hold: 2m, release: manual}", "{}"),
            "taking over site-a needs second evidence",
        ),
        (("confirm: [trunk:site-a-sbc]", "confirm: [peer:witness]"), "confirm needs a trunk"),
        (("confirm: [trunk:site-a-sbc]", "confirm: [trunk:nope]"), "confirm needs a trunk"),
        (("{quorum: majority}", "{quorum: majority, voters: [site-a, x]}"), "voter 'x'"),
        (("{quorum: majority}", "{quorum: majority, voters: [site-a]}"), "add this site"),
        (("requires: [peer:site-a]", "requires: [peer:site-z]"), "unknown target 'peer:site-z'"),
        (("heartbeat: 500ms", "heartbeat: 1s, heartbeat_expiry: 1s"), "heartbeat_expiry"),
        (("release: manual", "release: sometimes"), "release"),
        (("heartbeat: 500ms", "protocol: 3"), "protocol"),
    ],
)
def test_peer_config_problems_are_one_line_each(change: tuple[str, str], want: str | None) -> None:
    text = SITE_B.replace(*change)
    assert text != SITE_B
    if want is None:
        parse_config(text)
        return
    found = problems(text)
    assert any(want in p for p in found), found
    assert all("\n" not in p for p in found)


def test_second_evidence_can_be_turned_off_explicitly() -> None:
    text = SITE_B.replace(
        "{confirm: [trunk:site-a-sbc], hold: 2m, release: manual}", "{second_evidence: false}"
    )
    assert parse_config(text).core_spec().takeovers["site-a"].confirm == ()


def msg(payload: object, *, retained: bool = False, raw: bytes | None = None) -> Received:
    data = raw if raw is not None else json.dumps(payload).encode()
    return Received("trunkguard/site-a/sbc1/x", data, retained, None)


def test_wire_reads_births_heartbeats_and_claims() -> None:
    s = wire.status("site-a", "sbc1", msg({"status": "offline", "epoch": 7}), 4096)
    assert (s.epoch, s.online) == (7, False)
    doc = {"epoch": 8, "site": "evacuating", "peers": {"site-b": "down"}, "fenced": False}
    b = wire.beat("site-a", "sbc1", msg(doc), 4096, 3.0)
    assert b.evacuating and b.views == {"site-b": State.DOWN} and b.ttl == 3.0
    assert wire.claim("site-c", "n", "site-a", msg(None, raw=b""), 4096).epoch is None
    claimed = msg({"epoch": 9, "claimed": True})
    assert wire.claim("site-c", "n", "site-a", claimed, 4096).epoch == 9
    withdrawn = msg({"epoch": 9, "claimed": False})
    assert wire.claim("site-c", "n", "site-a", withdrawn, 4096).epoch is None
    with pytest.raises(wire.WireError, match="claimed must be"):
        wire.claim("site-c", "n", "site-a", msg({"epoch": 9}), 4096)


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (b"online", "not JSON"),  # a pre-epoch agent's plain status
        (b"[1]", "not a JSON object"),
        (b'{"status": "online"}', "epoch must be an integer"),
        (b'{"status": "online", "epoch": -1}', "epoch must be an integer"),
        (b'{"status": "online", "epoch": 1e30}', "epoch must be an integer"),
        (b'{"status": "online", "epoch": true}', "epoch must be an integer"),
        (b'{"status": "online", "epoch": 9223372036854775808}', "epoch must be an integer"),
        (b'{"status": "maybe", "epoch": 1}', "status must be online or offline"),
        (b"\xff\xfe", "not JSON"),
        (b"9" * 5000, "payload of 5000 bytes (max_payload 4096)"),
    ],
)
def test_wire_refuses_hostile_status(payload: bytes, want: str) -> None:
    with pytest.raises(wire.WireError, match=want.replace("(", r"\(").replace(")", r"\)")):
        wire.status("site-a", "sbc1", msg(None, raw=payload), 4096)


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({"epoch": 1, "site": "burning"}, "site must be normal or evacuating"),
        ({"epoch": 1, "peers": {"x": "sideways"}}, "unknown state"),
        ({"epoch": 1, "peers": [1]}, "peers must be an object"),
        ({"epoch": 1, "peers": {str(i): "up" for i in range(65)}}, "at most 64"),
        ({"epoch": 1, "fenced": "no"}, "fenced must be true or false"),
    ],
)
def test_wire_refuses_hostile_heartbeats(doc: dict[str, object], want: str) -> None:
    with pytest.raises(wire.WireError, match=want):
        wire.beat("site-a", "sbc1", msg(doc), 4096, 3.0)


def test_topic_filters() -> None:
    for good in ("a/b", "a/+/c", "a/#", "#", "+/+/takeover/site-a"):
        assert valid_filter(good), good
    for bad in ("", "a//b", "a/b+", "a/#/b", "a/b#", "/a"):
        assert not valid_filter(bad), bad
