"""What a drill injects through the core: labelled `drill`, never part of the intent
(a crash mid-drill restarts without it), undone exactly, and never undoing what an
operator did meanwhile. The cooling drill's simulated readings go through the sensor's
thresholds and the site rule; real readings meanwhile are kept for afterwards."""

import pytest

from tests.unit.test_evacuation import HOT, OUT, ROOM, all_up, engine, moves
from trunkguard.core.engine import DRILL
from trunkguard.core.events import Level, State, Verdict
from trunkguard.core.ids import parse_target as T
from trunkguard.core.sensor import SensorSpec
from trunkguard.core.site import Match, SiteState

LOCAL = T("trunk:local")


def test_drill_maintenance_is_labelled_and_never_persisted() -> None:
    eng = engine(groups=(OUT,))
    all_up(eng)
    s = eng.set_maintenance(LOCAL, True, 1.0, by=DRILL)
    assert [t.reason for t in s.transitions] == ["maintenance on (drill)"]
    assert moves(s) == [("out", "remote", "failover")]
    # Structurally marked (what sinks read) and said in words (what people read).
    assert all(ev.drill for ev in s.events)
    assert s.decisions[0].reason.endswith("(drill)")
    assert LOCAL not in eng.intent().maintenance  # a restart would not keep it
    s = eng.set_maintenance(LOCAL, False, 2.0, by=DRILL)
    assert s.transitions[0].new is State.UP and "(drill)" in s.transitions[0].reason


def test_a_network_reason_saying_drill_is_not_a_drill() -> None:
    """A carrier's reason phrase is network text: it cannot pass a failure off as a drill."""
    eng = engine(groups=(OUT,))
    all_up(eng)
    s = eng.observe(Verdict(LOCAL, False, 1.0, "503 maintenance on (drill)"))
    assert s.decisions and not any(ev.drill for ev in s.events)


def test_an_operator_taking_over_a_drilled_target_keeps_it() -> None:
    eng = engine(groups=(OUT,))
    all_up(eng)
    eng.set_maintenance(LOCAL, True, 1.0, by=DRILL)
    eng.set_maintenance(LOCAL, True, 2.0)  # the operator, during the drill
    assert LOCAL in eng.intent().maintenance
    assert not eng.set_maintenance(LOCAL, False, 3.0, by=DRILL)  # the drill's undo: ignored
    assert eng.targets[LOCAL].state is State.MAINTENANCE


def test_drill_evacuation_is_labelled_not_persisted_and_ends_at_once() -> None:
    eng = engine(groups=(OUT,))
    all_up(eng)
    s = eng.evacuate(True, 1.0, by=DRILL)
    assert [c.reason for c in s.site_changes] == ["forced by drill"]
    assert moves(s) == [("out", "remote", "evacuate")]
    i = eng.intent()
    assert not i.evacuating and not i.evacuation_forced
    s = eng.evacuate(False, 2.0, by=DRILL)
    assert [c.reason for c in s.site_changes] == ["evacuation ended by drill"]
    assert moves(s) == [("out", "local", "return")]


def test_an_operator_forcing_during_a_site_drill_keeps_the_evacuation() -> None:
    eng = engine(groups=(OUT,))
    all_up(eng)
    eng.evacuate(True, 1.0, by=DRILL)
    eng.evacuate(True, 2.0)  # the operator
    assert eng.intent().evacuation_forced
    assert not eng.evacuate(False, 3.0, by=DRILL)
    assert eng.site.evacuating is not None


def test_cooling_drill_rises_through_the_rule_and_puts_the_sensor_back() -> None:
    eng = engine(groups=(OUT,), hold=300.0)
    all_up(eng)
    eng.observe_sensor("room", 22.0, 1.0)
    s = eng.drill_sensor("room", 28.0, 2.0)
    assert [c.new for c in s.sensor_changes] == [Level.WARN]
    assert s.sensor_changes[0].reason.endswith("(drill)")
    # A real reading meanwhile: kept for afterwards, not shown, not judged.
    assert not eng.observe_sensor("room", 22.5, 2.5)
    s = eng.drill_sensor("room", 33.0, 3.0)
    assert [c.new for c in s.site_changes] == [SiteState.EVACUATING]
    assert s.site_changes[0].reason.endswith("(drill)")
    assert moves(s) == [("out", "remote", "evacuate")]
    assert not eng.intent().evacuating  # a crash now restarts without the drill
    s = eng.drill_sensor("room", None, 4.0)
    assert [c.new for c in s.site_changes] == [SiteState.NORMAL]  # no 300 s hold
    assert moves(s) == [("out", "local", "return")]
    room = eng.sensors["room"]
    assert (room.level, room.value, room.last_at) == (Level.OK, 22.5, 2.5)
    assert [v for _, v in room.samples] == [22.0, 22.5]  # no drill reading in the trend


def test_ending_a_cooling_drill_while_the_rule_holds_for_real_keeps_evacuating() -> None:
    chiller = SensorSpec("chiller", kind="bool", critical_when=False)
    eng = engine(
        groups=(OUT,),
        sensors=(ROOM, chiller),
        rule=Match(sensors=("room", "chiller"), is_="critical"),
    )
    all_up(eng)
    eng.observe_sensor("room", 22.0, 1.0)
    eng.observe_sensor("chiller", True, 1.0)
    eng.drill_sensor("room", 33.0, 2.0)
    assert eng.site.evacuating is not None
    eng.observe_sensor("chiller", False, 3.0)  # a real failure during the drill
    s = eng.drill_sensor("room", None, 4.0)
    assert not s.site_changes and eng.site.evacuating is not None
    assert eng.intent().evacuating is True  # real now: survives a restart


def test_drill_sensor_names_an_unknown_sensor() -> None:
    eng = engine(groups=(OUT,), rule=HOT)
    with pytest.raises(KeyError, match="unknown sensor 'nope'"):
        eng.drill_sensor("nope", 1.0, 1.0)
