"""Prometheus metrics, on a registry owned by each Metrics instance (never the global)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trunkguard import __version__
from trunkguard.core.ids import Paths
from trunkguard.obs.http import HttpServer, Query, Route
from trunkguard.obs.rtt import CompactHistogram

# SIP OPTIONS round trips: LAN carriers answer in ~1 ms, the slow tail is ~2.5 s.
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
# Failover reaction and actuator apply times: sub-millisecond to the 10 s budget.
ACTION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, mqtt_enabled: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._targets(r)
        self._probes(r)
        self._routes(r)
        self._sensors(r)
        self._peers(r)
        self._calls(r)
        self._process(r, mqtt_enabled)
        self._group_paths: dict[str, set[str]] = {}

    def _targets(self, r: CollectorRegistry) -> None:
        self.target_up = Gauge(
            "trunkguard_target_up", "1 when the target is up.", ["kind", "name"], registry=r
        )
        self.target_state = Gauge(
            "trunkguard_target_state",
            "1 for the current health state of the target, 0 for the others.",
            ["kind", "name", "state"],
            registry=r,
        )
        self.target_down_cause = Gauge(
            "trunkguard_target_down_cause",
            "1 for why a trunk is not up: timeout, refused, unreachable, dns, tls, reset, "
            "send_error, status_4xx..., dependency (its link), maintenance.",
            ["kind", "name", "cause"],
            registry=r,
        )
        self.transitions_total = Counter(
            "trunkguard_transitions_total",
            "Health state transitions of targets.",
            ["kind", "name", "to"],
            registry=r,
        )

    def _probes(self, r: CollectorRegistry) -> None:
        # One per trunk and target: compact and streamed by serve(), see obs/rtt.py.
        self.sip_options_rtt_seconds = CompactHistogram(
            "trunkguard_sip_options_rtt_seconds",
            "Round-trip time of answered SIP OPTIONS probes, per resolved target.",
            ["trunk", "target"],
            RTT_BUCKETS,
        )
        self.sip_options_responses_total = Counter(
            "trunkguard_sip_options_responses_total",
            "Final responses to SIP OPTIONS probes by status code, per resolved target.",
            ["trunk", "target", "code"],
            registry=r,
        )
        self.trunk_target_up = Gauge(
            "trunkguard_trunk_target_up",
            "1 when this resolved target of a multi-target trunk is up.",
            ["trunk", "target"],
            registry=r,
        )
        self.probe_failures_total = Counter(
            "trunkguard_probe_failures_total",
            "Probes that got no usable answer (timeout, refused, dns, ...).",
            ["trunk", "reason"],
            registry=r,
        )
        self.sip_socket_drops_total = Counter(
            "trunkguard_sip_socket_drops_total",
            "Datagrams the kernel dropped for the probe sockets (receive buffer full).",
            registry=r,
        )
        self.sip_unmatched_responses_total = Counter(
            "trunkguard_sip_unmatched_responses_total",
            "SIP responses that matched no outstanding probe.",
            ["reason"],
            registry=r,
        )

    def _routes(self, r: CollectorRegistry) -> None:
        self.route_active_path = Gauge(
            "trunkguard_route_active_path",
            "1 for the path a route group currently uses, 0 for its other paths.",
            ["group", "path"],
            registry=r,
        )
        self.route_no_path = Gauge(
            "trunkguard_route_no_path",
            "1 when no path of the route group qualifies (calls cannot be routed).",
            ["group"],
            registry=r,
        )
        self.failovers_total = Counter(
            "trunkguard_failovers_total",
            "Switches away from the preferred path.",
            ["group"],
            registry=r,
        )
        self.failbacks_total = Counter(
            "trunkguard_failbacks_total",
            "Returns to a more preferred path.",
            ["group"],
            registry=r,
        )
        self.reroute_seconds = Histogram(
            "trunkguard_reroute_seconds",
            "Time from the evidence that triggered a reroute to routing applied.",
            ["group"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )
        self.actuator_converged = Gauge(
            "trunkguard_actuator_converged",
            "1 when the actuator's real state matches the desired state.",
            ["actuator"],
            registry=r,
        )
        self.actuator_errors_total = Counter(
            "trunkguard_actuator_errors_total",
            "Failed actuator operations.",
            ["actuator", "reason"],
            registry=r,
        )
        self.actuator_apply_seconds = Histogram(
            "trunkguard_actuator_apply_seconds",
            "Duration of one actuator apply (including read-back).",
            ["actuator"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )

    def _sensors(self, r: CollectorRegistry) -> None:
        self.sensor_value = Gauge(
            "trunkguard_sensor_value",
            "Last reading of the sensor (booleans as 1/0), in the sensor's own unit.",
            ["sensor"],
            registry=r,
        )
        self.sensor_state = Gauge(
            "trunkguard_sensor_state",
            "1 for the sensor's current state (ok, warn, critical, stale, unknown), 0 else.",
            ["sensor", "state"],
            registry=r,
        )
        self.sensor_time_to_critical_seconds = Gauge(
            "trunkguard_sensor_time_to_critical_seconds",
            "Projected time until the sensor reaches critical at its current trend "
            "(+Inf when flat or falling, 0 when critical).",
            ["sensor"],
            registry=r,
        )
        self.sensor_rate_per_minute = Gauge(
            "trunkguard_sensor_rate_per_minute",
            "Rate of change of the sensor over its window, in its unit per minute.",
            ["sensor"],
            registry=r,
        )
        self.sensor_read_errors_total = Counter(
            "trunkguard_sensor_read_errors_total",
            "Sensor readings that could not be taken or parsed.",
            ["sensor"],
            registry=r,
        )
        self.site_evacuating = Gauge(
            "trunkguard_site_evacuating",
            "1 while this site is evacuating (route groups on their remote paths).",
            registry=r,
        )
        self.evacuations_total = Counter(
            "trunkguard_evacuations_total",
            "Site evacuations started (by rule or by operator).",
            ["cause"],
            registry=r,
        )

    def _peers(self, r: CollectorRegistry) -> None:
        self.peer_up = Gauge(
            "trunkguard_peer_up",
            "1 while the peer site is up (fresh heartbeat, not evacuating).",
            ["peer"],
            registry=r,
        )
        self.takeover_active = Gauge(
            "trunkguard_takeover_active",
            "1 while this agent serves the peer site's calls (taken over).",
            ["peer"],
            registry=r,
        )
        self.takeovers_total = Counter(
            "trunkguard_takeovers_total",
            "Takeovers of a peer's calls by result: taken, released, lost (a rival's "
            "claim won), refused_partition, refused_quorum, refused_evacuating.",
            ["peer", "result"],
            registry=r,
        )
        self.fenced = Gauge(
            "trunkguard_fenced",
            "1 while this agent is fenced (cannot see the broker, its own heartbeat or "
            "any other voter): it keeps its routing and claims nothing.",
            registry=r,
        )
        self.peer_messages_total = Counter(
            "trunkguard_peer_messages_total",
            "Messages from peers by result: ok, stale (older session), invalid.",
            ["peer", "result"],
            registry=r,
        )

    def _calls(self, r: CollectorRegistry) -> None:
        self.call_check_up = Gauge(
            "trunkguard_call_check_up",
            "1 when the last synthetic call passed.",
            ["call"],
            registry=r,
        )
        self.call_checks_total = Counter(
            "trunkguard_call_checks_total",
            "Synthetic calls by result.",
            ["call", "result"],
            registry=r,
        )
        self.call_post_dial_delay_seconds = Gauge(
            "trunkguard_call_post_dial_delay_seconds",
            "INVITE to 200 OK of the last synthetic call.",
            ["call"],
            registry=r,
        )
        self.call_rtp_loss_ratio = Gauge(
            "trunkguard_call_rtp_loss_ratio",
            "RTP loss of the last synthetic call.",
            ["call"],
            registry=r,
        )
        self.call_jitter_seconds = Gauge(
            "trunkguard_call_jitter_seconds",
            "RTP jitter of the last synthetic call.",
            ["call"],
            registry=r,
        )
        self.call_last_success = Gauge(
            "trunkguard_call_last_success_timestamp_seconds",
            "When the synthetic call last passed (Unix time; the agent's start until then).",
            ["call"],
            registry=r,
        )
        self.call_max_age = Gauge(
            "trunkguard_call_max_age_seconds",
            "How old a passing call may be before the path it proves is unverified.",
            ["call"],
            registry=r,
        )
        self.drills_total = Counter(
            "trunkguard_drills_total", "Drills by result.", ["scenario", "result"], registry=r
        )
        self.drill_seconds = Gauge(
            "trunkguard_drill_seconds",
            "The last drill's phases, seconds after the injection.",
            ["scenario", "phase"],
            registry=r,
        )
        self.notifications_total = Counter(
            "trunkguard_notifications_total",
            "Incident notices by notifier: sent, failed (after retries), rate_limited, dropped.",
            ["notifier", "result"],
            registry=r,
        )
        self.path_silent_failure = Gauge(
            "trunkguard_path_silent_failure",
            "1 when a path qualifies by OPTIONS but the call check that verifies it fails: "
            "a backup that answers pings and drops calls.",
            ["group", "path"],
            registry=r,
        )

    def _process(self, r: CollectorRegistry, mqtt_enabled: bool) -> None:
        self.event_loop_lag_seconds = Gauge(
            "trunkguard_event_loop_lag_seconds",
            "How late the event loop ran a timer at the last check.",
            registry=r,
        )
        # Not exported when MQTT is not configured, so its alert cannot fire then.
        self.mqtt_connected = Gauge(
            "trunkguard_mqtt_connected",
            "1 while connected to the MQTT broker.",
            registry=r if mqtt_enabled else None,
        )
        self.commands_total = Counter(
            "trunkguard_commands_total",
            "Signed MQTT commands by result: ok, or why refused (bad_signature, expired, "
            "replayed, counter, forbidden, ...).",
            ["result"],
            registry=r,
        )
        self.config_reload_total = Counter(
            "trunkguard_config_reload_total",
            "Configuration reloads by result.",
            ["result"],
            registry=r,
        )
        self.build_info = Gauge(
            "trunkguard_build_info",
            "Always 1; the version is a label.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)

    def set_active_path(self, group: str, paths: Sequence[str], active: Paths | None) -> None:
        """Publish the routing decision for a group; active=None raises the no-path alarm."""
        actives = set(active) if active is not None else set()
        names = list(paths) + sorted(actives - set(paths))
        for path in self._group_paths.get(group, set()) - set(names):
            self.route_active_path.remove(group, path)  # path removed by a config reload
        self._group_paths[group] = set(names)
        for path in names:
            self.route_active_path.labels(group, path).set(1 if path in actives else 0)
        self.route_no_path.labels(group).set(1 if active is None else 0)
        # Export the counters at 0 from the start: increase() misses a series' first sample.
        self.failovers_total.labels(group)
        self.failbacks_total.labels(group)

    def set_target_state(self, kind: str, name: str, state: str, all_states: Sequence[str]) -> None:
        for s in {*all_states, state}:
            self.target_state.labels(kind, name, s).set(1 if s == state else 0)

    def set_sensor_state(self, sensor: str, state: str, all_states: Sequence[str]) -> None:
        for s in all_states:
            self.sensor_state.labels(sensor, s).set(1 if s == state else 0)

    def serve(
        self, host: str, port: int, more: Mapping[str, Route] | None = None
    ) -> Callable[[], None]:
        """Serve /metrics (and `more` routes, see obs/http.py); returns how to stop it."""
        routes = {"/metrics": self.render, **(more or {})}
        return HttpServer(host, port, routes).start().stop

    def render(self, query: Query) -> tuple[str, Iterator[bytes]]:
        """The registry as prometheus_client renders it, then the per-target RTT
        histograms streamed in chunks; `name[]` filters work as with prometheus_client."""
        names = query.get("name[]")
        registry = self.registry.restricted_registry(names) if names else self.registry
        rtt = self.sip_options_rtt_seconds
        with_rtt = not names or any(n == rtt.name or n.startswith(rtt.name + "_") for n in names)

        def body() -> Iterator[bytes]:
            yield generate_latest(registry)
            if with_rtt:
                yield from rtt.expose()

        return CONTENT_TYPE_LATEST, body()

    async def watch_loop_lag(self, interval: float = 0.5) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.event_loop_lag_seconds.set(max(0.0, loop.time() - start - interval))
