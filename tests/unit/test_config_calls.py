"""Config for synthetic call checks: targets call:NAME, verified paths, one-line problems;
and how a call's result is judged."""

from __future__ import annotations

import pytest

from trunkguard.calls.check import CallResult
from trunkguard.config import ConfigError, parse_config
from trunkguard.core.ids import parse_target as T
from trunkguard.features.calls import CallConfig

TEXT = """\
site: dc1
node: sbc1
trunks:
  carrier-b: {uri: "sip:192.0.2.1"}
calls:
  via-b: {uri: "sip:echo@192.0.2.1", every: 15m, rise: 2, fall: 1}
routes:
  pstn:
    paths:
      - {name: b, requires: [trunk:carrier-b], verified_by: call:via-b}
      - {name: fallback, requires: [call:via-b]}
"""


def test_call_checks_become_targets_with_their_own_schedule() -> None:
    spec = parse_config(TEXT).core_spec()
    ts = spec.trunks[T("call:via-b")]
    assert ts.params.interval == 900.0 and ts.params.rise == 2 and ts.params.fall == 1
    assert spec.groups[0].paths[0].verified_by == T("call:via-b")


@pytest.mark.parametrize(
    ("change", "want"),
    [
        (("verified_by: call:via-b", "verified_by: call:nope"), "needs a configured call check"),
        (("verified_by: call:via-b", "verified_by: trunk:carrier-b"), "needs a configured call"),
        (('uri: "sip:echo@192.0.2.1"', 'uri: "http://x"'), "uri must be a sip: URI"),
        (('uri: "sip:echo@192.0.2.1"', 'uri: "sip:a b"'), "uri must be a sip: URI"),
        (("every: 15m", "every: 15"), "duration needs a unit"),
        (("rise: 2", "rise: 2, max_age: 0s"), "greater than 0"),
        (
            (
                "rise: 2",
                'rise: 2, capacity: {kamailio: "unix:/run/k.sock", channels: 2, keep_free: 2}',
            ),
            "keep_free 2 leaves none of 2 channels",
        ),
        (
            ("rise: 2", 'rise: 2, capacity: {kamailio: "ftp://x", channels: 30}'),
            "calls.via-b.capacity.kamailio: bad RPC URL",
        ),
    ],
)
def test_call_config_problems(change: tuple[str, str], want: str) -> None:
    text = TEXT.replace(*change)
    assert text != TEXT
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert any(want in p for p in e.value.problems), e.value.problems


def test_a_call_is_judged_on_media_loss_jitter_and_tone() -> None:
    c = CallConfig(uri="sip:x@y", max_loss=0.05, max_jitter="30ms", tone=True)
    good = CallResult(True, "answered with media both ways", 150, 150, 0.0, 0.001, None, 0.004, 1.0)
    assert c.judge(good) == (True, "answered with media both ways, answered in 4 ms")
    lossy = CallResult(True, "answered with media both ways", 140, 150, 0.1, 0.001, tone_back=1.0)
    assert c.judge(lossy) == (False, "RTP loss 10.0% > 5.0%")
    jittery = CallResult(True, "x", 150, 150, 0.0, 0.08, tone_back=1.0)
    assert c.judge(jittery) == (False, "jitter 80.0 ms > 30 ms")
    no_echo = CallResult(True, "x", 150, 150, 0.0, 0.001, tone_back=0.01)
    assert c.judge(no_echo)[1] == "answered with media, but our tone did not come back"
    assert c.judge(CallResult(False, "rejected: 503 Busy")) == (False, "rejected: 503 Busy")
    assert c.deadline() == 5.0 + 3.0 + 5.0
