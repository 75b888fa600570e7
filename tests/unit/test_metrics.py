"""Metrics through the real HTTP exporter, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.lib.procs import free_port
from trunkguard import __version__
from trunkguard.core.ids import Paths
from trunkguard.obs.metrics import Metrics


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    m = Metrics()
    port = free_port(socket.SOCK_STREAM)
    stop = m.serve("127.0.0.1", port)
    try:
        yield m, f"http://127.0.0.1:{port}/metrics"
    finally:
        stop()


def scrape(url: str) -> dict[str, list[Sample]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list[Sample]], metric: str, /, **labels: str) -> float:
    hits = [s.value for s in samples.get(metric, []) if s.labels == labels]
    assert len(hits) == 1, (metric, labels, samples.get(metric))
    return hits[0]


def test_exporter_serves_names_and_labels(served: tuple[Metrics, str]) -> None:
    m, url = served
    m.target_up.labels("trunk", "carrierA").set(1)
    m.set_target_state("trunk", "carrierA", "up", ["unknown", "up", "down"])
    m.sip_options_rtt_seconds.labels("carrierA", "192.0.2.1:5060").observe(0.012)
    m.sip_options_responses_total.labels("carrierA", "192.0.2.1:5060", "200").inc()
    m.probe_failures_total.labels("carrierA", "timeout").inc(2)
    m.sip_unmatched_responses_total.labels("unknown_branch").inc()
    m.failovers_total.labels("pstn").inc()
    m.transitions_total.labels("trunk", "carrierA", "up").inc()
    m.reroute_seconds.labels("pstn").observe(0.3)
    m.actuator_converged.labels("netlink").set(1)
    m.actuator_errors_total.labels("kamailio", "rpc_timeout").inc()
    m.actuator_apply_seconds.labels("netlink").observe(0.002)
    m.mqtt_connected.set(1)
    m.config_reload_total.labels("ok").inc()

    s = scrape(url)
    assert value(s, "trunkguard_target_up", kind="trunk", name="carrierA") == 1
    assert value(s, "trunkguard_target_state", kind="trunk", name="carrierA", state="up") == 1
    assert value(s, "trunkguard_target_state", kind="trunk", name="carrierA", state="down") == 0
    rtt = "trunkguard_sip_options_rtt_seconds_bucket"
    t = "192.0.2.1:5060"
    assert value(s, rtt, trunk="carrierA", target=t, le="0.025") == 1
    assert value(s, rtt, trunk="carrierA", target=t, le="0.01") == 0
    resp = "trunkguard_sip_options_responses_total"
    assert value(s, resp, trunk="carrierA", target=t, code="200") == 1
    assert value(s, "trunkguard_probe_failures_total", trunk="carrierA", reason="timeout") == 2
    assert value(s, "trunkguard_sip_unmatched_responses_total", reason="unknown_branch") == 1
    assert value(s, "trunkguard_failovers_total", group="pstn") == 1
    assert value(s, "trunkguard_transitions_total", kind="trunk", name="carrierA", to="up") == 1
    assert value(s, "trunkguard_reroute_seconds_bucket", group="pstn", le="0.001") == 0
    assert value(s, "trunkguard_reroute_seconds_bucket", group="pstn", le="10.0") == 1
    assert value(s, "trunkguard_actuator_converged", actuator="netlink") == 1
    assert (
        value(s, "trunkguard_actuator_errors_total", actuator="kamailio", reason="rpc_timeout") == 1
    )
    assert value(s, "trunkguard_actuator_apply_seconds_count", actuator="netlink") == 1
    assert value(s, "trunkguard_mqtt_connected") == 1
    assert value(s, "trunkguard_config_reload_total", result="ok") == 1
    assert value(s, "trunkguard_build_info", version=__version__) == 1
    assert value(s, "trunkguard_event_loop_lag_seconds") == 0
    assert all(name.startswith(("trunkguard_", "process_", "python_")) for name in s)


def test_histogram_buckets_span_the_documented_ranges() -> None:
    m = Metrics()
    m.sip_options_rtt_seconds.labels("t", "x").observe(1)
    m.reroute_seconds.labels("g").observe(1)
    s = scrape_registry(m)
    rtt = {float(x.labels["le"]) for x in s["trunkguard_sip_options_rtt_seconds_bucket"]}
    reroute = {float(x.labels["le"]) for x in s["trunkguard_reroute_seconds_bucket"]}
    assert min(rtt) == 0.001 and max(rtt - {float("inf")}) == 2.5
    assert min(reroute) == 0.001 and max(reroute - {float("inf")}) == 10


def scrape_registry(m: Metrics) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {}
    # Exactly what /metrics serves, including the streamed per-target RTT histograms.
    body = b"".join(m.render({})[1])
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def test_set_active_path_marks_one_path_and_the_no_path_alarm() -> None:
    m = Metrics()
    m.set_active_path("pstn", ["carrierA", "carrierB", "site2"], Paths(("carrierB",)))
    s = scrape_registry(m)
    active = {x.labels["path"]: x.value for x in s["trunkguard_route_active_path"]}
    assert active == {"carrierA": 0, "carrierB": 1, "site2": 0}
    assert value(s, "trunkguard_route_no_path", group="pstn") == 0
    # Exported at 0 before the first failover, so increase() sees the first one.
    assert value(s, "trunkguard_failovers_total", group="pstn") == 0

    m.set_active_path("pstn", ["carrierA", "carrierB", "site2"], None)
    s = scrape_registry(m)
    assert {x.value for x in s["trunkguard_route_active_path"]} == {0}
    assert value(s, "trunkguard_route_no_path", group="pstn") == 1

    # carrierB removed on reload
    m.set_active_path("pstn", ["carrierA", "site2"], Paths(("carrierA",)))
    s = scrape_registry(m)
    active = {x.labels["path"]: x.value for x in s["trunkguard_route_active_path"]}
    assert active == {"carrierA": 1, "site2": 0}
    assert value(s, "trunkguard_route_no_path", group="pstn") == 0


def test_instances_are_independent_and_mqtt_gauge_optional() -> None:
    a, b = Metrics(), Metrics(mqtt_enabled=False)
    a.failovers_total.labels("g").inc()
    assert "trunkguard_failovers_total" not in scrape_registry(b)
    b.mqtt_connected.set(1)  # still usable, just not exported
    assert "trunkguard_mqtt_connected" not in scrape_registry(b)
    assert value(scrape_registry(a), "trunkguard_mqtt_connected") == 0


def test_serve_stop_frees_the_port() -> None:
    m = Metrics()
    port = free_port(socket.SOCK_STREAM)
    m.serve("127.0.0.1", port)()
    with pytest.raises(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
        pass
    m.serve("127.0.0.1", port)()  # can bind again


async def test_watch_loop_lag_measures_a_blocked_loop() -> None:
    m = Metrics()
    seen: list[float] = []
    measured = asyncio.Event()

    class Recorder:  # stands in for the gauge so the test can await the measurement
        def set(self, v: float) -> None:
            seen.append(v)
            measured.set()

    m.event_loop_lag_seconds = Recorder()  # type: ignore[assignment]
    task = asyncio.create_task(m.watch_loop_lag(interval=0.01))
    await asyncio.sleep(0)  # let the watcher start its timer
    loop = asyncio.get_running_loop()
    blocked_until = loop.time() + 0.2
    while loop.time() < blocked_until:
        pass  # block the loop on purpose
    await asyncio.wait_for(measured.wait(), 5)
    task.cancel()
    assert seen[0] >= 0.1
