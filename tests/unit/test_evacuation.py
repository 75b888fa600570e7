"""Engine level: links -> dependent trunks -> groups; sensors -> site rule -> groups move
to their remote paths and back; operator force/cancel, manual return, pins, restore."""

from collections.abc import Iterable

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.lib.core import Inputs, Step, texts
from tests.lib.core import StepEngine as Engine
from trunkguard.core.events import Decision, State, Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import parse_target as T
from trunkguard.core.link import LinkParams
from trunkguard.core.policy import GroupSpec, PathSpec
from trunkguard.core.sensor import SensorSpec
from trunkguard.core.site import AllOf, AnyOf, Match, Rule, SiteSpec, SiteState

P = HealthParams(interval=1.0, fast_interval=0.2, rise=1, fall=1)
LOCAL, REMOTE, REMOTE2 = T("trunk:local"), T("trunk:remote"), T("trunk:remote2")
A, B = T("trunk:a"), T("trunk:b")
LINK, LINK2 = T("link:uplink"), T("link:uplink2")
U, D = State.UP, State.DOWN

OUT = GroupSpec(
    "out", (PathSpec("local", (LOCAL,)), PathSpec("remote", (REMOTE,), remote=True)), hold=30
)
OUT3 = GroupSpec(
    "out",
    (
        PathSpec("local", (LOCAL,)),
        PathSpec("r1", (REMOTE,), remote=True),
        PathSpec("r2", (REMOTE2,), remote=True),
    ),
    hold=30,
)
# A group with no remote path: an evacuation has nowhere to take it.
INTERNAL = GroupSpec("internal", (PathSpec("a", (A,)), PathSpec("b", (B,))), hold=30)
ROOM = SensorSpec("room", warn=27.0, critical=32.0, stale_after=3600.0, unit="°C")
HOT: Rule = Match(sensors=("room",), is_="critical")


def engine(
    groups: Iterable[GroupSpec] = (OUT, INTERNAL),
    rule: Rule | None = HOT,
    hold: float = 300.0,
    return_mode: str = "auto",
    sensors: Iterable[SensorSpec] = (ROOM,),
    links: Iterable[str] = (),
    depends: dict[str, tuple[str, ...]] | None = None,
    up_hold: float = 5.0,
) -> Engine:
    gs = list(groups)
    targets = sorted({t for g in gs for t in g.targets})
    inputs = Inputs(
        links={n: LinkParams(up_hold=up_hold) for n in links},
        depends=depends or {},
        sensors={s.name: s for s in sensors},
        site=SiteSpec(rule, hold, return_mode),
    )
    return Engine({t: P for t in targets}, gs, inputs=inputs, now=0.0)


def verdict(eng: Engine, target: str, ok: bool, at: float) -> Step:
    return eng.observe(Verdict(target, ok, at, "200 OK" if ok else "timeout"))


def all_up(eng: Engine, at: float = 0.0) -> list[Decision]:
    out: list[Decision] = []
    for t in eng.targets:
        out += verdict(eng, t, True, at).decisions
    return out


def moves(step: Step) -> list[tuple[str, str, str]]:
    return [(d.group, str(d.new), d.kind) for d in step.decisions]


# ---- links -> trunks -> groups ---------------------------------------------------------

LINKED = GroupSpec("out", (PathSpec("main", (LOCAL,)), PathSpec("backup", (REMOTE,))), hold=30)


def test_a_link_going_down_takes_its_trunks_down_at_once_and_back_after_up_hold() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)})
    s = eng.observe_link(LINK, True, "carrier", 0)
    assert [(t.target, t.new) for t in s.transitions] == [(LINK, U)] and not s.decisions
    assert [str(d.new) for d in all_up(eng, 0)] == ["main"]
    s = eng.observe_link(LINK, False, "carrier lost", 10)
    assert [(t.target, t.new) for t in s.transitions] == [(LINK, D), (LOCAL, D)]
    assert s.transitions[1].reason == "link:uplink down: carrier lost"
    assert s.transitions[1].at == 10
    assert moves(s) == [("out", "backup", "failover")] and s.decisions[0].cause_at == 10
    assert "trunk:local down" in s.decisions[0].reason
    # Probes that still succeed (cached path, other route) do not bring it back.
    assert not verdict(eng, LOCAL, True, 11)
    assert eng.targets[LOCAL].state is D
    assert not eng.observe_link(LINK, True, "carrier", 20)  # held
    assert eng.next_wakeup() == 25
    assert not eng.tick(24.9)
    s = eng.tick(25)
    assert [(t.target, t.new, t.at) for t in s.transitions] == [(LINK, U, 25), (LOCAL, U, 25)]
    assert s.transitions[1].reason == "link:uplink back up, probes say up"
    assert not s.decisions and eng.next_wakeup() == 55  # the group's own failback hold
    s = eng.tick(55)
    assert moves(s) == [("out", "main", "failback")]


def test_probes_that_failed_during_the_outage_keep_the_trunk_down_after_it() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)}, up_hold=0)
    eng.observe_link(LINK, True, "carrier", 0)
    all_up(eng, 0)
    eng.observe_link(LINK, False, "carrier lost", 10)
    assert not verdict(eng, LOCAL, False, 11).transitions  # already down
    s = eng.observe_link(LINK, True, "carrier", 12)
    assert [(t.target, t.new) for t in s.transitions] == [(LINK, U)]
    assert eng.targets[LOCAL].state is D and texts(eng.desired()) == {"out": "backup"}
    s = verdict(eng, LOCAL, True, 13)
    assert [(t.target, t.new) for t in s.transitions] == [(LOCAL, U)]


def test_a_trunk_behind_two_links_is_down_while_either_is() -> None:
    eng = engine(
        [LINKED], rule=None, links=[LINK, LINK2], depends={LOCAL: (LINK, LINK2)}, up_hold=0
    )
    eng.observe_link(LINK, True, "carrier", 0)
    eng.observe_link(LINK2, True, "carrier", 0)
    all_up(eng, 0)
    eng.observe_link(LINK, False, "carrier lost", 1)
    s = eng.observe_link(LINK2, False, "carrier lost", 2)
    assert [t.target for t in s.transitions] == [LINK2]  # the trunk was down already
    s = eng.observe_link(LINK, True, "carrier", 3)
    assert [t.target for t in s.transitions] == [LINK] and eng.targets[LOCAL].state is D
    s = eng.observe_link(LINK2, True, "carrier", 4)
    assert [t.target for t in s.transitions] == [LINK2, LOCAL]


def test_a_link_down_at_start_holds_its_trunk_down_before_any_probe() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)})
    s = eng.observe_link(LINK, False, "no carrier", 0)
    assert [(t.target, t.old, t.new) for t in s.transitions] == [
        (LINK, State.UNKNOWN, D),
        (LOCAL, State.UNKNOWN, D),
    ]
    assert [str(d.new) for d in all_up(eng, 1)] == ["backup"]
    assert eng.targets[LOCAL].state is D


def test_a_link_never_reported_does_not_hold_its_trunk() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)})
    assert [str(d.new) for d in all_up(eng, 0)] == ["main"]


def test_link_maintenance_takes_its_trunks_out_and_back() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)})
    eng.observe_link(LINK, True, "carrier", 0)
    all_up(eng, 0)
    s = eng.set_maintenance(LINK, True, 5)
    assert [(t.target, t.new) for t in s.transitions] == [
        (LINK, State.MAINTENANCE),
        (LOCAL, D),
    ]
    assert moves(s) == [("out", "backup", "failover")]
    s = eng.set_maintenance(LINK, False, 6)
    assert [(t.target, t.new) for t in s.transitions] == [(LINK, U), (LOCAL, U)]
    with pytest.raises(KeyError):
        eng.set_maintenance(T("link:nope"), True, 7)


def test_trunk_maintenance_ends_down_while_its_link_is_down() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)}, up_hold=0)
    eng.observe_link(LINK, True, "carrier", 0)
    all_up(eng, 0)
    eng.set_maintenance(LOCAL, True, 1)
    s = eng.observe_link(LINK, False, "carrier lost", 2)
    assert [t.target for t in s.transitions] == [LINK]  # maintenance hides it
    s = eng.set_maintenance(LOCAL, False, 3)
    assert [(t.target, t.new) for t in s.transitions] == [(LOCAL, D)]
    assert "link:uplink down" in s.transitions[0].reason
    s = eng.observe_link(LINK, True, "carrier", 4)
    assert [(t.target, t.new) for t in s.transitions] == [(LINK, U), (LOCAL, U)]


def test_a_site_rule_on_links() -> None:
    rule = Match(targets=(LINK, LINK2), is_="down", at_least=None)
    eng = engine(rule=rule, sensors=(), links=[LINK, LINK2], up_hold=0)
    eng.observe_link(LINK, True, "carrier", 0)
    eng.observe_link(LINK2, True, "carrier", 0)
    all_up(eng, 0)
    assert not eng.observe_link(LINK, False, "carrier lost", 1).decisions
    s = eng.observe_link(LINK2, False, "carrier lost", 2)
    assert moves(s) == [("out", "remote", "evacuate")]
    assert s.decisions[0].reason == "site evacuating: 2 of 2: link:uplink down, link:uplink2 down"


# ---- sensors -> site -> groups ---------------------------------------------------------


def test_groups_move_to_remote_paths_and_return_after_hold() -> None:
    eng = engine()
    assert sorted(moves(Step(all_up(eng, 0)))) == [
        ("internal", "a", "initial"),
        ("out", "local", "initial"),
    ]
    s = eng.observe_sensor("room", 22.0, 10)
    assert not s.decisions and not s.site_changes
    s = eng.observe_sensor("room", 33.5, 100)
    assert [(c.new, c.at) for c in s.sensor_changes] == [("critical", 100)]
    assert [(c.new, c.reason) for c in s.site_changes] == [
        (SiteState.EVACUATING, "room 33.5°C critical")
    ]
    assert moves(s) == [("out", "remote", "evacuate")]  # internal has nowhere to go
    d = s.decisions[0]
    assert str(d.old) == "local" and d.at == d.cause_at == 100
    assert d.reason == "site evacuating: room 33.5°C critical"
    assert texts(eng.desired()) == {"out": "remote", "internal": "a"}
    assert not eng.observe_sensor("room", 31.0, 150).decisions  # still critical (hysteresis)
    s = eng.observe_sensor("room", 30.0, 200)  # clear from here
    assert not s.decisions and not s.site_changes
    assert eng.next_wakeup() == 500
    assert not eng.tick(499.9).decisions
    s = eng.tick(500)
    assert [(c.new, c.at) for c in s.site_changes] == [(SiteState.NORMAL, 500)]
    assert moves(s) == [("out", "local", "return")]
    assert s.decisions[0].reason == "site evacuation over" and s.decisions[0].at == 500
    assert texts(eng.desired()) == {"out": "local", "internal": "a"}
    assert eng.next_wakeup() == 200 + 3600  # only the sensor's staleness is left


def test_the_return_skips_the_groups_own_hold() -> None:
    eng = engine(hold=60)
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    verdict(eng, LOCAL, False, 20)
    eng.observe_sensor("room", 20, 30)  # clear at 30: return due at 90
    verdict(eng, LOCAL, True, 89)  # up for 1 s only, far less than the group's 30 s
    s = eng.tick(90)
    assert moves(s) == [("out", "local", "return")]


def test_the_return_goes_to_the_best_qualifying_path() -> None:
    eng = engine(hold=60)
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    verdict(eng, LOCAL, False, 20)
    eng.observe_sensor("room", 20, 30)
    s = eng.tick(90)
    assert s.site_changes and not s.decisions and str(eng.desired()["out"]) == "remote"
    s = verdict(eng, LOCAL, True, 100)  # back after the evacuation: ordinary failback
    assert not s.decisions and eng.next_wakeup() == 130
    assert moves(eng.tick(130)) == [("out", "local", "failback")]


def test_no_remote_path_up_keeps_the_local_one_until_a_remote_one_qualifies() -> None:
    eng = engine()
    verdict(eng, LOCAL, True, 0)
    verdict(eng, REMOTE, False, 0)
    all_up(eng, 0)
    verdict(eng, REMOTE, False, 1)
    s = eng.observe_sensor("room", 33, 10)
    assert s.site_changes and not s.decisions
    assert str(eng.desired()["out"]) == "local" and eng.groups["out"].alarm
    s = verdict(eng, REMOTE, True, 20)
    assert moves(s) == [("out", "remote", "evacuate")] and not eng.groups["out"].alarm


def test_while_evacuated_failover_and_failback_stay_among_remote_paths() -> None:
    eng = engine([OUT3])
    all_up(eng, 0)
    s = eng.observe_sensor("room", 33, 10)
    assert moves(s) == [("out", "r1", "evacuate")]
    s = verdict(eng, REMOTE, False, 20)
    assert moves(s) == [("out", "r2", "evacuate")]  # local qualifies, but is local
    s = verdict(eng, REMOTE, True, 30)
    assert not s.decisions and eng.next_wakeup() == 60
    assert moves(eng.tick(60)) == [("out", "r1", "failback")]
    verdict(eng, REMOTE, False, 70)
    verdict(eng, REMOTE2, False, 71)  # no remote path left: keep the last one, alarm
    assert str(eng.desired()["out"]) == "r2" and eng.groups["out"].alarm
    assert eng.next_wakeup() == 10 + 3600  # no failback to local is pending


def test_a_stale_sensor_rule_evacuates_on_the_timer() -> None:
    spec = SensorSpec("room", warn=27.0, critical=32.0, stale_after=60.0)
    eng = engine(sensors=[spec], rule=Match(sensors=("room",), is_="stale"), hold=120)
    all_up(eng, 0)
    eng.observe_sensor("room", 22, 5)
    eng.sensor_failed("room", "ipmitool: timeout", 6)
    assert eng.next_wakeup() == 65
    s = eng.tick(65)
    assert [c.reason for c in s.sensor_changes] == ["no reading for 60s (ipmitool: timeout)"]
    assert moves(s) == [("out", "remote", "evacuate")]
    assert s.decisions[0].reason == "site evacuating: room stale"
    eng.observe_sensor("room", 22, 70)
    assert eng.next_wakeup() == 130  # stale again at 130, before the return at 190
    s = eng.tick(130)
    assert s.sensor_changes and not s.decisions and eng.next_wakeup() is None
    eng.observe_sensor("room", 22, 140)
    assert eng.next_wakeup() == 200
    eng.observe_sensor("room", 22, 190)
    eng.observe_sensor("room", 22, 250)
    assert moves(eng.tick(260)) == [("out", "local", "return")]


def test_a_sensor_dying_during_the_rise_does_not_end_the_evacuation() -> None:
    spec = SensorSpec("room", warn=27.0, critical=32.0, stale_after=60.0, window=300.0)
    eng = engine(sensors=[spec], rule=Match(sensors=("room",), critical_within=600.0), hold=60)
    all_up(eng, 0)
    decided = []
    for i in range(13):  # 2 degrees a minute from 20: projected critical from t=100
        decided += eng.observe_sensor("room", 20.0 + i / 3, 10.0 * i).decisions
    assert [(str(d.new), d.kind, d.at) for d in decided] == [("remote", "evacuate", 100)]
    s = eng.tick(180)  # the sensor dies at 24 degrees, 4 minutes from critical
    assert [c.new for c in s.sensor_changes] == ["stale"] and not s.site_changes
    assert eng.site.evacuating == "room 24 critical in 4m00s (stale)"
    assert eng.next_wakeup() is None
    assert not eng.tick(10_000) and str(eng.desired()["out"]) == "remote"
    eng.observe_sensor("room", 22.0, 10_000)  # back, and cool: no trend left, clear
    assert eng.next_wakeup() == 10_060
    assert moves(eng.tick(10_060)) == [("out", "local", "return")]


def test_a_sensor_never_read_goes_stale_from_start() -> None:
    spec = SensorSpec("room", stale_after=60.0)
    eng = engine(sensors=[spec], rule=Match(sensors=("room",), is_="stale"))
    all_up(eng, 0)
    assert eng.next_wakeup() == 60
    assert moves(eng.tick(60)) == [("out", "remote", "evacuate")]


def test_the_chiller_rule_needs_both_halves() -> None:
    chiller = SensorSpec("chiller", kind="bool", critical_when=False, stale_after=3600)
    rule = AnyOf(
        (
            HOT,
            AllOf(
                (
                    Match(sensors=("chiller",), is_="critical"),
                    Match(sensors=("room",), is_="warn"),
                )
            ),
        )
    )
    eng = engine(sensors=[ROOM, chiller], rule=rule)
    all_up(eng, 0)
    assert not eng.observe_sensor("chiller", False, 1).decisions
    assert not eng.observe_sensor("room", 26.9, 2).decisions
    s = eng.observe_sensor("room", 27.0, 3)
    assert moves(s) == [("out", "remote", "evacuate")]
    assert eng.site.evacuating == "chiller false critical and room 27°C warn"


# ---- the operator ----------------------------------------------------------------------


def test_operator_forces_an_evacuation_and_cancels_it() -> None:
    eng = engine()
    all_up(eng, 0)
    s = eng.evacuate(True, 10)
    assert [(c.new, c.reason, c.forced) for c in s.site_changes] == [
        (SiteState.EVACUATING, "forced by operator", True)
    ]
    assert moves(s) == [("out", "remote", "evacuate")]
    assert s.decisions[0].reason == "site evacuating: forced by operator"
    assert not eng.evacuate(True, 11)  # again: nothing new
    eng.observe_sensor("room", 33, 20)
    with pytest.raises(ValueError, match="rule still holds"):
        eng.evacuate(False, 21)
    assert eng.site.forced and str(eng.desired()["out"]) == "remote"
    eng.observe_sensor("room", 22, 30)
    assert eng.site.next_wakeup() is None  # forced: no return on the rule's hold
    assert not eng.tick(10_000).decisions
    s = eng.evacuate(False, 10_001)
    assert [(c.new, c.reason) for c in s.site_changes] == [
        (SiteState.NORMAL, "evacuation ended by operator")
    ]
    assert moves(s) == [("out", "local", "return")]
    assert not eng.evacuate(False, 10_002)


def test_operator_takes_over_a_rule_evacuation() -> None:
    eng = engine()
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    s = eng.evacuate(True, 11)
    assert not s and eng.site.evacuating == "forced by operator"
    eng.observe_sensor("room", 22, 20)
    assert not eng.tick(1000).decisions  # the rule's hold no longer returns it
    assert moves(eng.evacuate(False, 1001)) == [("out", "local", "return")]


def test_manual_return_waits_for_the_operator() -> None:
    eng = engine(return_mode="manual", hold=60)
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    with pytest.raises(ValueError, match="rule still holds"):
        eng.evacuate(False, 11)
    eng.observe_sensor("room", 22, 20)
    assert eng.site.next_wakeup() is None
    assert not eng.tick(3000).decisions and str(eng.desired()["out"]) == "remote"
    eng.observe_sensor("room", 22, 3001)
    s = eng.evacuate(False, 3002)
    assert moves(s) == [("out", "local", "return")] and s.decisions[0].at == 3002


def test_a_local_pin_is_dropped_by_an_evacuation_and_refused_during_it() -> None:
    eng = engine([OUT3])
    all_up(eng, 0)
    assert not eng.failover("out", "local", 1).decisions  # pinned where it already is
    assert eng.groups["out"].pinned == "local"
    s = eng.observe_sensor("room", 33, 10)
    assert moves(s) == [("out", "r1", "evacuate")] and eng.groups["out"].pinned is None
    with pytest.raises(ValueError, match="local and the site is evacuating"):
        eng.failover("out", "local", 11)
    assert eng.groups["out"].pinned is None and str(eng.desired()["out"]) == "r1"
    s = eng.failover("out", "r2", 12)  # a remote pin is fine
    assert moves(s) == [("out", "r2", "manual")]
    s = eng.failback("out", 13)  # operator failback: the best remote path, not local
    assert moves(s) == [("out", "r1", "manual")]


def test_a_remote_pin_outlives_the_evacuation() -> None:
    eng = engine([OUT3], hold=60)
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    eng.failover("out", "r2", 11)
    eng.observe_sensor("room", 22, 20)
    s = eng.tick(80)
    assert s.site_changes and not s.decisions  # the operator's pin stands
    assert str(eng.desired()["out"]) == "r2"
    assert moves(eng.failback("out", 81)) == [("out", "local", "manual")]


def test_restore_resumes_an_evacuation_before_the_first_verdicts() -> None:
    eng = engine(hold=60)
    eng.site.restore(evacuating=True, forced=False, now=0)
    d = all_up(eng, 0)
    assert sorted(moves(Step(d))) == [
        ("internal", "a", "initial"),
        ("out", "remote", "initial"),
    ]
    # The verdicts at 0 evaluated the rule: clear (no reading is not an alarm) from 0.
    assert eng.site.clear_since == 0 and eng.next_wakeup() == 60
    eng.observe_sensor("room", 33, 5)  # the first reading: still hot
    assert eng.next_wakeup() == 5 + 3600
    eng.observe_sensor("room", 22, 10)
    assert eng.next_wakeup() == 70
    s = eng.tick(70)
    assert moves(s) == [("out", "local", "return")]


def test_restore_of_a_forced_evacuation_waits_for_the_operator() -> None:
    eng = engine(hold=60)
    eng.site.restore(evacuating=True, forced=True, now=0)
    all_up(eng, 0)
    eng.observe_sensor("room", 22, 5)
    assert not eng.tick(1000).decisions and str(eng.desired()["out"]) == "remote"
    assert moves(eng.evacuate(False, 1001)) == [("out", "local", "return")]


# ---- properties ------------------------------------------------------------------------

CHILLER = SensorSpec("chiller", kind="bool", critical_when=False, stale_after=500.0)
ROOM500 = SensorSpec("room", warn=27.0, critical=32.0, stale_after=500.0, window=120.0)
RULE: Rule = AnyOf(
    (
        Match(sensors=("room",), is_="critical"),
        Match(sensors=("room",), critical_within=300.0),
        Match(sensors=("room",), is_="stale"),
        AllOf((Match(sensors=("chiller",), is_="critical"), Match(sensors=("room",), is_="warn"))),
    )
)
TRUNKS = [LOCAL, REMOTE, REMOTE2, A, B]
OPS = st.one_of(
    st.tuples(st.just("verdict"), st.sampled_from(TRUNKS), st.booleans()),
    st.tuples(st.just("link"), st.sampled_from([LINK, LINK2]), st.booleans()),
    st.tuples(st.just("room"), st.sampled_from([20.0, 22.0, 26.5, 28.0, 31.5, 33.0]), st.none()),
    st.tuples(st.just("chiller"), st.booleans(), st.none()),
    st.tuples(st.just("evacuate"), st.booleans(), st.none()),
    st.tuples(st.just("maint"), st.sampled_from([LOCAL, REMOTE, LINK]), st.booleans()),
    st.tuples(st.just("pin"), st.sampled_from(["local", "r1", "r2"]), st.none()),
    st.tuples(st.just("release"), st.none(), st.none()),
)
GAPS = st.sampled_from([0.0, 0.5, 5.0, 10.0, 30.0, 61.0, 400.0])


def _remote_qualifies(eng: Engine) -> bool:
    g = eng.groups["out"]
    return any(p.remote and all(eng.states().get(t) is U for t in p.requires) for p in g.spec.paths)


def _is_remote(eng: Engine, path: object) -> bool:
    return any(
        path is not None and p.name == str(path) and p.remote for p in eng.groups["out"].spec.paths
    )


@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(st.tuples(GAPS, OPS), min_size=1, max_size=40),
    return_mode=st.sampled_from(["auto", "manual"]),
    up_hold=st.sampled_from([0.0, 5.0]),
)
def test_timers_and_evacuation_invariants_under_any_inputs(
    ops: list[tuple[float, tuple[str, object, object]]], return_mode: str, up_hold: float
) -> None:
    """Property, whatever happens in whatever order:
    - after tick(w) with w = next_wakeup(), next_wakeup() is None or later than w
      (a timer loop driven by it never spins and never runs late);
    - while the site is evacuating, a ready group never sits on (nor moves to) a local
      path while one of its remote paths qualifies;
    - groups without remote paths never get evacuate/return decisions."""
    eng = engine(
        [OUT3, INTERNAL],
        rule=RULE,
        hold=120.0,
        return_mode=return_mode,
        sensors=[ROOM500, CHILLER],
        links=[LINK, LINK2],
        depends={LOCAL: (LINK,), A: (LINK, LINK2)},
        up_hold=up_hold,
    )
    for link in (LINK, LINK2):
        eng.observe_link(link, True, "carrier", 0.0)
    all_up(eng, 0.0)
    eng.observe_sensor("chiller", True, 0.0)
    eng.observe_sensor("room", 22.0, 0.0)
    assert texts(eng.desired()) == {"out": "local", "internal": "a"}
    now = 0.0

    def check(step: Step) -> None:
        for d in step.decisions:
            if d.group == "internal":
                assert d.kind not in ("evacuate", "return")
            if d.kind == "evacuate":
                assert _is_remote(eng, str(d.new))
        g = eng.groups["out"]
        ready = all(eng.states()[t] is not State.UNKNOWN for t in g.spec.targets)
        if eng.site.evacuating and ready and _remote_qualifies(eng):
            event("evacuating with a remote path up")
            assert _is_remote(eng, g.active), (g.active, eng.site.reason)
        if any(d.kind == "return" for d in step.decisions):
            event("returned")

    for gap, (op, x, y) in ops:
        now += gap
        while (w := eng.next_wakeup()) is not None and w <= now:
            event("timer ran")
            check(eng.tick(w))
            after = eng.next_wakeup()
            assert after is None or after > w, (w, after)
        step = Step()
        if op == "verdict":
            step = verdict(eng, str(x), bool(y), now)
        elif op == "link":
            step = eng.observe_link(str(x), bool(y), "carrier" if y else "carrier lost", now)
        elif op == "room":
            assert isinstance(x, float)
            step = eng.observe_sensor("room", x, now)
        elif op == "chiller":
            step = eng.observe_sensor("chiller", bool(x), now)
        elif op == "evacuate":
            try:
                step = eng.evacuate(bool(x), now)
            except ValueError:
                assert eng.site.holding is not None
        elif op == "maint":
            step = eng.set_maintenance(x, bool(y), now)  # type: ignore[arg-type]
        elif op == "pin":
            try:
                step = eng.failover("out", str(x), now)
            except ValueError as e:
                assert "does not qualify" in str(e) or "site is evacuating" in str(e)
        else:
            step = eng.failback("out", now)
        check(step)


# ---- known bugs (engine.py / policy.py: not ours to fix here) ----------------------------


def test_a_reload_without_a_rule_lets_the_site_return() -> None:
    eng = engine(hold=60)
    all_up(eng, 0)
    eng.observe_sensor("room", 33, 10)
    eng.observe_sensor("room", 22, 20)  # clear from 20: return due at 80
    targets = dict.fromkeys(eng.targets, P)
    inputs = Inputs(sensors={"room": ROOM}, site=SiteSpec(None, 60))
    eng.reconfigure(targets, [OUT, INTERNAL], inputs=inputs, now=30)
    assert eng.next_wakeup() == 80
    s = eng.tick(80)
    w = eng.next_wakeup()
    assert w is None or w > 80
    assert moves(s) == [("out", "local", "return")]


def test_a_pending_failback_does_not_spin_while_a_new_target_is_unknown() -> None:
    eng = engine([LINKED], rule=None)
    all_up(eng, 0)
    verdict(eng, LOCAL, False, 10)
    verdict(eng, LOCAL, True, 20)
    assert eng.next_wakeup() == 50
    grown = GroupSpec("out", (*LINKED.paths, PathSpec("via-b", (LINK,))), hold=30)
    inputs = Inputs(links={LINK: LinkParams()})
    eng.reconfigure(dict.fromkeys(eng.targets, P), [grown], inputs=inputs, now=30)
    eng.tick(50)
    w = eng.next_wakeup()
    assert w is None or w > 50


def test_a_reload_that_drops_a_dependency_frees_the_trunk() -> None:
    eng = engine([LINKED], rule=None, links=[LINK], depends={LOCAL: (LINK,)})
    eng.observe_link(LINK, True, "carrier", 0)
    all_up(eng, 0)
    eng.observe_link(LINK, False, "carrier lost", 10)
    assert eng.targets[LOCAL].state is D
    inputs = Inputs(links={LINK: LinkParams()})  # same link, no depends_on any more
    eng.reconfigure(dict.fromkeys(eng.targets, P), [LINKED], inputs=inputs, now=20)
    assert eng.targets[LOCAL].state is U  # its probes say up
