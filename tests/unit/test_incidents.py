"""Incidents from the core's events: opened by a failure with its cause, the routing
it moved as impact, critical when a group is left without a path or the site
evacuates, closed when what failed is back; maintenance and drills open nothing."""

from tests.unit.test_evacuation import LOCAL, OUT, REMOTE, ROOM, all_up, engine, verdict
from trunkguard.core.engine import DRILL
from trunkguard.core.ids import parse_target as T
from trunkguard.core.incident import Tracker


def tracker() -> Tracker:
    return Tracker(lambda at, key: f"{at:g}-{key}")


def test_a_trunk_down_that_moves_routing_is_major_and_closes_when_back() -> None:
    eng, tr = engine(groups=(OUT,)), tracker()
    all_up(eng)
    s = verdict(eng, LOCAL, False, 5.0)
    [inc] = tr.feed(s.events, 5.0, eng.groups)
    assert (inc.id, inc.key, inc.kind, inc.severity) == (
        "5-trunk:local",
        "trunk:local",
        "trunk",
        "major",
    )
    assert inc.cause == "trunk:local down: 1 consecutive failures: timeout"
    assert inc.impact == {"out": "local → remote"}
    assert inc.closed is None and inc.revision == 1
    s = verdict(eng, LOCAL, True, 9.0)
    [same] = tr.feed(s.events, 9.0, eng.groups)
    assert same is inc and inc.closed == 9.0 and not tr.open
    doc = inc.doc(lambda t: f"t{t:g}")
    assert doc["state"] == "closed" and doc["duration_s"] == 4.0
    assert doc["evidence"][-1].startswith("t9 trunk:local down → up")


def test_a_backup_failing_is_minor_and_no_path_is_critical() -> None:
    eng, tr = engine(groups=(OUT,)), tracker()
    all_up(eng)
    [backup] = tr.feed(verdict(eng, REMOTE, False, 5.0).events, 5.0, eng.groups)
    assert backup.severity == "minor" and backup.impact == {}
    changed = tr.feed(verdict(eng, LOCAL, False, 6.0).events, 6.0, eng.groups)
    local = next(i for i in changed if i.key == "trunk:local")
    assert local.severity == "critical" and local.impact == {"out": "no path"}


def test_maintenance_and_drills_open_nothing() -> None:
    eng, tr = engine(groups=(OUT,)), tracker()
    all_up(eng)
    assert tr.feed(eng.set_maintenance(T("trunk:local"), True, 5.0).events, 5.0, eng.groups) == []
    eng.set_maintenance(T("trunk:local"), False, 6.0)
    s = eng.evacuate(True, 7.0, by=DRILL)
    assert tr.feed(s.events, 7.0, eng.groups) == []
    eng.evacuate(False, 8.0, by=DRILL)
    eng.observe_sensor("room", 22.0, 9.0)
    assert tr.feed(eng.drill_sensor("room", 40.0, 10.0).events, 10.0, eng.groups) == []


def test_the_site_evacuating_is_critical_until_it_returns() -> None:
    eng, tr = engine(groups=(OUT,), sensors=(ROOM,)), tracker()
    all_up(eng)
    [inc] = tr.feed(eng.evacuate(True, 5.0).events, 5.0, eng.groups)
    assert inc.kind == "site" and inc.severity == "critical"
    assert inc.impact == {"out": "local → remote"}
    [inc2] = tr.feed(eng.evacuate(False, 6.0).events, 6.0, eng.groups)
    assert inc2 is inc and inc.closed == 6.0


def test_a_flapping_trunk_keeps_its_evidence_bounded() -> None:
    eng, tr = engine(groups=(OUT,)), tracker()
    all_up(eng)
    t = 5.0
    for _ in range(30):
        tr.feed(verdict(eng, REMOTE, False, t).events, t, eng.groups)
        tr.feed(verdict(eng, REMOTE, True, t + 0.5).events, t + 0.5, eng.groups)
        t += 1.0
    assert not tr.open and len(tr.closed) == 20
    assert all(len(i.evidence) <= 20 for i in tr.closed)
