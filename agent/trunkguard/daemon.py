"""The daemon: the imperative shell around the pure core.

One event loop. Probe loops, the link watcher and the sensor pollers (and MQTT
sensor topics) feed observations into the Engine; each Step it returns
is carried out here: logs, metrics, MQTT, persisted intent, and the desired
routing pushed to the actuators' convergers. Nothing here decides routing.

Long-lived parts (metrics listener, MQTT session, control socket) live for the
whole process; probe loops and actuators form a "generation" that a SIGHUP
reload replaces while the Engine keeps every target's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from trunkguard import __version__, persist
from trunkguard.act.base import Actuator
from trunkguard.act.command import CommandActuator, CommandSpec
from trunkguard.act.converge import ApplyReport, Converger
from trunkguard.act.kamailio import DispatcherChoice, KamailioActuator
from trunkguard.act.netlink import NetlinkActuator, RouteSpec, RuleSpec
from trunkguard.act.template import TemplateActuator, TemplateSpec
from trunkguard.bus.mqtt import MqttPublisher, MqttSettings
from trunkguard.config import Config, ConfigError, load_config
from trunkguard.control import ControlError, ControlServer
from trunkguard.core.engine import Engine, Step
from trunkguard.core.events import Decision, ProbeOutcome, State, Transition, Verdict
from trunkguard.core.sensor import LEVELS, SensorChange, SensorHealth
from trunkguard.core.site import SiteChange
from trunkguard.obs import systemd
from trunkguard.obs.logging import configure_logging, get_logger
from trunkguard.obs.metrics import Metrics
from trunkguard.watch.cooling import MqttSource, Sample, SensorPlan, SensorWatcher
from trunkguard.watch.links import LinkWatcher
from trunkguard.watch.sensor_parse import SensorReadError, parse_payload
from trunkguard.watch.trunks import TrunkPlan, TrunkWatcher

Observer = Callable[[str, Mapping[str, Any]], None]
STATES = [s.value for s in State]


class _ProbeMetrics:
    """Metric children of one (trunk, target), looked up once instead of per probe."""

    __slots__ = ("_failures", "_m", "_responses", "dest", "rtt", "trunk")

    def __init__(self, m: Metrics, trunk: str, dest: str) -> None:
        self._m, self.trunk, self.dest = m, trunk, dest
        self.rtt = m.sip_options_rtt_seconds.labels(trunk, dest)
        self._responses: dict[int, Any] = {}
        self._failures: dict[str, Any] = {}

    def response(self, code: int) -> None:
        c = self._responses.get(code)
        if c is None:
            c = self._responses[code] = self._m.sip_options_responses_total.labels(
                self.trunk, self.dest, str(code)
            )
        c.inc()

    def failure(self, reason: str) -> None:
        c = self._failures.get(reason)
        if c is None:
            c = self._failures[reason] = self._m.probe_failures_total.labels(self.trunk, reason)
        c.inc()


@dataclass
class _Pending:
    """A routing decision waiting for every actuator to report it applied."""

    path: str
    cause_at: float
    decided_at: float
    waiting: set[str] = field(default_factory=set)


def build_actuators(cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
    routes: dict[tuple[str, str], list[RouteSpec]] = {}
    rules: dict[tuple[str, str], list[RuleSpec]] = {}
    commands: dict[tuple[str, str], CommandSpec] = {}
    choices: dict[tuple[str, str], DispatcherChoice] = {}
    for gname, g in cfg.routes.items():
        for p in g.paths:
            if p.actions.netlink:
                routes[(gname, p.name)] = [r.spec() for r in p.actions.netlink]
            if any(q.actions.rules for q in g.paths):
                # Every path of a group with rules, so switching to one clears the others'.
                rules[(gname, p.name)] = [r.spec() for r in p.actions.rules]
            if p.actions.command:
                c = p.actions.command
                commands[(gname, p.name)] = CommandSpec(
                    tuple(c.argv), tuple(c.verify) if c.verify else None, c.timeout
                )
            if p.actions.kamailio:
                k = p.actions.kamailio
                choices[(gname, p.name)] = DispatcherChoice(k.setid, tuple(k.active))
    acts: list[Actuator] = []
    if routes or rules:
        acts.append(NetlinkActuator("netlink", routes, rules))
    if commands:
        acts.append(CommandActuator("command", commands, env=env))
    ks = cfg.actuators.kamailio
    if choices and ks is not None:
        acts.append(
            KamailioActuator(
                "kamailio", ks.rpc, choices, timeout=ks.timeout, off_state=ks.off_state
            )
        )
    for t in cfg.actuators.templates:
        spec = TemplateSpec(
            t.template, t.output, tuple(t.reload) if t.reload else None, t.timeout, t.mode
        )
        acts.append(TemplateActuator(f"template:{t.name}", spec, template_context(cfg), env=env))
    return acts


def template_context(cfg: Config) -> Callable[[Mapping[str, str]], Mapping[str, Any]]:
    """What a template sees: each decided group's active path, its vars and remoteness."""
    paths = {(g, p.name): p for g, gc in cfg.routes.items() for p in gc.paths}

    def context(desired: Mapping[str, str]) -> Mapping[str, Any]:
        routes = {}
        for g, active in desired.items():
            chosen = [paths[(g, n)] for n in active.split("+") if (g, n) in paths]
            if chosen:  # a multipath group: the first (most preferred) path's vars
                routes[g] = {
                    "path": active,
                    "paths": [p.name for p in chosen],
                    "vars": dict(chosen[0].vars),
                    "remote": chosen[0].remote,
                }
        return {"routes": routes, "site": cfg.site, "node": cfg.node}

    return context


class Daemon:
    def __init__(
        self,
        config_path: str,
        cfg: Config,
        *,
        observer: Observer | None = None,
        json_logs: bool | None = None,
    ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.observer = observer
        configure_logging(cfg.log_level, json_logs)
        self.log = get_logger("trunkguard")
        self.json_logs = json_logs
        self.clock = time.monotonic
        self.started = self.clock()
        self.wall_offset = time.time() - self.started
        self.metrics = Metrics(mqtt_enabled=cfg.mqtt is not None)
        self.engine = Engine(
            cfg.health_params(), cfg.group_specs(), cfg.quorums(), cfg.inputs(), self.started
        )
        for name in cfg.sensors:
            self.metrics.set_sensor_state(name, "unknown", LEVELS)
        self.seq = 0
        self.last_outcome: dict[str, ProbeOutcome] = {}
        self._probe_metrics: dict[tuple[str, str], _ProbeMetrics] = {}
        self.pending: dict[str, _Pending] = {}
        self.convergers: list[Converger] = []
        self.pushed: dict[str, str] = {}
        self.mqtt: MqttPublisher | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._save_wake = asyncio.Event()
        self._restore()

    # ---- intent kept across restarts -------------------------------------------------

    def _restore(self) -> None:
        saved, problem = persist.load(self.cfg.state_dir)
        if problem:
            self.log.warning("state file unusable", problem=problem)
        now = self.clock()
        for target in saved.maintenance:
            h = self.engine.targets.get(target) or self.engine.links.get(target)
            if h is not None:
                h.set_maintenance(True, now)
        self.engine.site.restore(saved.evacuating, saved.evacuation_forced, now)
        for gname, path in saved.active.items():
            g = self.engine.groups.get(gname)
            names = {p.name for p in g.spec.paths} if g else set()
            if g and set(path.split("+")) <= names:
                g.active = path  # enforced only once every target has a verdict
        for gname, path in saved.pinned.items():
            g = self.engine.groups.get(gname)
            if g and any(p.name == path for p in g.spec.paths):
                g.pinned = path

    def _save(self) -> None:
        """Ask the writer task to persist; the fsync must never delay a reroute."""
        self._save_wake.set()

    def _saved_now(self) -> persist.Saved:
        return persist.Saved(
            active={n: g.active for n, g in self.engine.groups.items() if g.active},
            pinned={n: g.pinned for n, g in self.engine.groups.items() if g.pinned},
            maintenance=[
                *(n for n, t in self.engine.targets.items() if t.maintenance),
                *(n for n, lh in self.engine.links.items() if lh.maintenance),
            ],
            evacuating=self.engine.site.evacuating is not None,
            evacuation_forced=self.engine.site.forced,
        )

    async def _writer(self) -> None:
        """Persist intent off the event loop, coalescing bursts of changes."""
        while True:
            await self._save_wake.wait()
            self._save_wake.clear()
            try:
                await asyncio.to_thread(persist.save, self.cfg.state_dir, self._saved_now())
            except OSError as e:
                self.log.error("cannot save state", error=str(e))

    def request_stop(self) -> None:
        self._stop.set()

    # ---- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, ev in (
            (signal.SIGTERM, self._stop),
            (signal.SIGINT, self._stop),
            (signal.SIGHUP, self._reload),
        ):
            loop.add_signal_handler(sig, ev.set)
        stop_metrics: Callable[[], None] | None = None
        control = ControlServer(self.cfg.control.socket, self._control, self.log)
        try:
            if self.cfg.metrics is not None:
                host, port = self.cfg.metrics.host_port
                stop_metrics = self.metrics.serve(host, port)
            await control.start()
        except OSError as e:
            self.log.error("cannot start", error=str(e))
            if stop_metrics:
                stop_metrics()
            return 1
        if self.cfg.mqtt is not None:
            self.mqtt = MqttPublisher(
                self._mqtt_settings(), log=self.log, on_connected=self._mqtt_state
            )
        try:
            async with asyncio.TaskGroup() as tg:
                background = [
                    tg.create_task(self._supervise("loop-lag", self.metrics.watch_loop_lag)),
                    tg.create_task(self._supervise("state-writer", self._writer)),
                ]
                if self.mqtt is not None:
                    background.append(tg.create_task(self._supervise("mqtt", self.mqtt.run)))
                wd = systemd.watchdog_interval()
                if wd:
                    background.append(tg.create_task(systemd.watchdog_loop(wd)))
                gen = tg.create_task(self._generation())
                self._publish_state()
                systemd.ready(f"probing {len(self.cfg.trunks)} trunks")
                _quiet_gc()
                loop.call_later(max(self.cfg.probe.interval, 1.0) * 5, _quiet_gc)
                self.log.info(
                    "started",
                    version=__version__,
                    site=self.cfg.site,
                    node=self.cfg.node,
                    trunks=len(self.cfg.trunks),
                    groups=len(self.cfg.routes),
                )
                while not self._stop.is_set():
                    waiter = tg.create_task(self._stop.wait())
                    reloader = tg.create_task(self._reload.wait())
                    await asyncio.wait([waiter, reloader], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    reloader.cancel()
                    if self._reload.is_set() and not self._stop.is_set():
                        self._reload.clear()
                        if self._do_reload():
                            gen.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await gen
                            gen = tg.create_task(self._generation())
                systemd.stopping()
                self.log.info("stopping: routes are left as they are")
                gen.cancel()
                if self._save_wake.is_set():
                    try:
                        await asyncio.to_thread(persist.save, self.cfg.state_dir, self._saved_now())
                    except OSError as e:
                        self.log.error("cannot save state", error=str(e))
                if self.mqtt is not None:
                    self._publish_state()
                    await self.mqtt.stop()
                for t in background:
                    t.cancel()
        finally:
            await control.close()
            if stop_metrics:
                stop_metrics()
        return 0

    def _mqtt_settings(self) -> MqttSettings:
        m = self.cfg.mqtt
        assert m is not None
        tls = m.tls
        return MqttSettings(
            host=m.host,
            port=m.port,
            site=self.cfg.site,
            node=self.cfg.node,
            prefix=m.prefix,
            username=m.username,
            password=m.secret(),
            client_id=m.client_id,
            keepalive=m.keepalive,
            tls_ca_file=tls.ca_file if tls else None,
            tls_cert_file=tls.cert_file if tls else None,
            tls_key_file=tls.key_file if tls else None,
            tls_insecure=tls.insecure if tls else False,
            tls=tls is not None,
        )

    def _mqtt_state(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)

    async def _supervise(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Keep a background task alive: log and restart it if it ever fails."""
        delay = 0.5
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("task failed, restarting", task=name, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _do_reload(self) -> bool:
        systemd.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            for p in e.problems:
                self.log.error("reload rejected, keeping the running config", problem=p)
            self.metrics.config_reload_total.labels(result="error").inc()
            systemd.ready("reload rejected")
            return False
        fixed = ("site", "node", "mqtt", "metrics", "control", "state_dir")
        changed = [k for k in fixed if getattr(new, k) != getattr(self.cfg, k)]
        if changed:
            self.log.warning("these settings change only on restart", keys=changed)
            new = new.model_copy(update={k: getattr(self.cfg, k) for k in changed})
        self.cfg = new
        configure_logging(new.log_level, self.json_logs)
        fresh = new.sensors.keys() - self.engine.sensors.keys()
        step = self.engine.reconfigure(
            new.health_params(), new.group_specs(), new.quorums(), new.inputs(), self.clock()
        )
        for name in fresh:
            self.metrics.set_sensor_state(name, "unknown", LEVELS)
        self._handle(step)
        self.metrics.config_reload_total.labels(result="ok").inc()
        self.log.info("config reloaded", trunks=len(new.trunks), groups=len(new.routes))
        systemd.ready("reloaded")
        return True

    # ---- one generation: probes, actuators, timers ----------------------------------

    async def _generation(self) -> None:
        cfg = self.cfg
        watcher = TrunkWatcher(
            cfg,
            health=lambda target: self.engine.targets.get(target),
            on_result=self._on_probe,
            on_dests=self._on_dests,
            on_unmatched=self._unmatched,
            on_transport_event=self._transport_event,
            log=self.log,
            clock=self.clock,
        )
        env = {"TRUNKGUARD_SITE": cfg.site, "TRUNKGUARD_NODE": cfg.node}
        self.convergers = [
            Converger(
                a,
                drift_interval=cfg.actuators.drift_interval,
                backoff_initial=cfg.actuators.backoff_initial,
                backoff_max=cfg.actuators.backoff_max,
                on_report=self._on_report,
            )
            for a in build_actuators(cfg, env)
        ]
        self.pushed = {}
        links = LinkWatcher(cfg.link_specs(), self._on_link, log=self.log, clock=self.clock)
        plans = cfg.sensor_plans()
        sensors = SensorWatcher(plans, self._on_sample, log=self.log, clock=self.clock, env=env)
        if self.mqtt is not None:
            self.mqtt.set_subscriptions(
                {
                    p.source.topic: self._mqtt_sensor(p, p.source.field)
                    for p in plans
                    if isinstance(p.source, MqttSource)
                }
            )
        try:
            async with asyncio.TaskGroup() as tg:
                for c in self.convergers:
                    tg.create_task(self._supervise(f"actuator {c.actuator.name}", c.run))
                if cfg.links:
                    tg.create_task(self._supervise("links", links.run))
                if plans:
                    tg.create_task(self._supervise("sensors", sensors.run))
                tg.create_task(watcher.run(self._supervise))
                tg.create_task(self._supervise("timers", self._timer_loop))
                # Groups that depend on nothing (and site rules) are decided now, not
                # at the first transition that happens to feed them.
                self._handle(self.engine.tick(self.clock()))
                self._push_desired()
        finally:
            watcher.close()
            for c in self.convergers:
                with contextlib.suppress(Exception):
                    await c.actuator.close()

    def _on_probe(self, plan: TrunkPlan, dest: str, outcome: ProbeOutcome, v: Verdict) -> None:
        # The hot path: 10,000 trunks mean 10,000 calls a second.
        self.last_outcome[plan.target] = outcome
        pm = self._probe_metrics.get((plan.name, dest))
        if pm is None:
            pm = self._probe_metrics[(plan.name, dest)] = _ProbeMetrics(
                self.metrics, plan.name, dest
            )
        if outcome.reason == "response" and outcome.code is not None:
            pm.response(outcome.code)
            if outcome.rtt is not None:
                pm.rtt.observe(outcome.rtt)
        if not v.ok:
            pm.failure("status" if outcome.reason == "response" else outcome.reason)
        if self.observer is not None:
            self.observer(
                "probe",
                {
                    "target": plan.target,
                    "dest": dest,
                    "ok": v.ok,
                    "reason": v.reason,
                    "code": outcome.code,
                    "rtt": outcome.rtt,
                    "at": outcome.at,
                },
            )
        step = self.engine.observe(v, dest)
        if step:
            self._handle(step)

    def _on_dests(self, target: str, dests: list[str]) -> None:
        th = self.engine.targets.get(target)
        if th is not None and set(th.dests) != set(dests):
            self.log.info("destinations", target=target, dests=dests)
        self._handle(self.engine.set_dests(target, dests, self.clock()))

    def _on_link(self, name: str, up: bool, reason: str, at: float) -> None:
        self._handle(self.engine.observe_link(f"link:{name}", up, reason, at))
        self._timer_wake.set()  # a link coming up starts its up_hold timer

    def _mqtt_sensor(self, plan: SensorPlan, field: str | None) -> Callable[[str, bytes], None]:
        def handle(topic: str, payload: bytes) -> None:
            try:
                value: Sample | None = parse_payload(payload, field, plan.kind)
                error = ""
            except SensorReadError as e:
                value, error = None, f"{topic}: {e}"
                sh = self.engine.sensors.get(plan.name)
                if sh is not None and sh.error != error:  # once per change, not per message
                    self.log.warning("sensor read failed", sensor=plan.name, error=error)
            self._on_sample(plan.name, value, self.clock(), error)

        return handle

    def _on_sample(self, name: str, value: Sample | None, at: float, error: str) -> None:
        sh = self.engine.sensors.get(name)
        if sh is None:
            return  # a late reading for a sensor removed by a reload
        if value is None:
            self.metrics.sensor_read_errors_total.labels(sensor=name).inc()
            self.engine.sensor_failed(name, error)
            self._observe("sensor_error", sensor=name, error=error, mono=at)
            return
        step = self.engine.observe_sensor(name, value, at)
        m = self.metrics
        m.sensor_value.labels(sensor=name).set(float(value))
        ttc = sh.time_to_critical(at)
        if sh.spec.critical is not None and sh.spec.kind == "number":
            m.sensor_time_to_critical_seconds.labels(sensor=name).set(
                float("inf") if ttc is None else ttc
            )
        rate = sh.rate_per_minute()
        if rate is not None:
            m.sensor_rate_per_minute.labels(sensor=name).set(rate)
        if self.mqtt:
            self.mqtt.publish(f"sensors/{name}", self._sensor_json(sh, at), retain=True)
        self._observe("sensor", sensor=name, value=value, level=sh.level.value, ttc=ttc, mono=at)
        self._handle(step)

    def _transport_event(self, key: str, kind: str, detail: str) -> None:
        # The stream prober reports a transport problem once per change, not per probe.
        self.log.warning("transport problem", connection=key, kind=kind, detail=detail)

    def _unmatched(self, reason: str) -> None:
        self.metrics.sip_unmatched_responses_total.labels(reason=reason).inc()

    async def _timer_loop(self) -> None:
        while True:
            self._timer_wake.clear()
            nxt = self.engine.next_wakeup()
            now = self.clock()
            if nxt is not None and nxt <= now:
                self._handle(self.engine.tick(now))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), None if nxt is None else nxt - now)

    # ---- carrying out a Step ----------------------------------------------------------

    def _handle(self, step: Step) -> None:
        # Desired routing only changes through a non-empty step (transitions, decisions).
        if not step:
            return
        for t in step.dest_transitions:
            self._on_dest_transition(t)
        for t in step.transitions:
            self._on_transition(t)
        for c in step.sensor_changes:
            self._on_sensor_change(c)
        for sc in step.site_changes:
            self._on_site_change(sc)
        for d in step.decisions:
            self._on_decision(d)
        self._push_desired()
        if any(t.target.startswith("link:") and t.new is State.UP for t in step.transitions):
            # Routes through a link that went down may have been deleted by the kernel.
            for conv in self.convergers:
                conv.recheck()
        if (
            step.decisions
            or step.site_changes
            or any(
                t.new is State.MAINTENANCE or t.old is State.MAINTENANCE for t in step.transitions
            )
        ):
            self._save()
        if step.transitions or step.decisions or step.site_changes or step.dest_transitions:
            self._publish_state()
        self._timer_wake.set()

    def _on_transition(self, t: Transition) -> None:
        kind, _, name = t.target.partition(":")
        self.log.info(
            "target transition", target=t.target, old=t.old.value, new=t.new.value, reason=t.reason
        )
        m = self.metrics
        m.set_target_state(kind, name, t.new.value, STATES)
        m.target_up.labels(kind=kind, name=name).set(1 if t.new is State.UP else 0)
        m.transitions_total.labels(kind=kind, name=name, to=t.new.value).inc()
        payload = {
            "target": t.target,
            "old": t.old.value,
            "new": t.new.value,
            "reason": t.reason,
            "at": self._wall(t.at),
        }
        self._announce(
            "transition", payload, t.at, f"{kind}s/{name}", self._any_target_json(t.target)
        )

    def _on_sensor_change(self, c: SensorChange) -> None:
        log = self.log.warning if c.new.value in ("warn", "critical", "stale") else self.log.info
        log("sensor", sensor=c.sensor, old=c.old.value, new=c.new.value, reason=c.reason)
        self.metrics.set_sensor_state(c.sensor, c.new.value, LEVELS)
        payload = {
            "sensor": c.sensor,
            "old": c.old.value,
            "new": c.new.value,
            "reason": c.reason,
            "at": self._wall(c.at),
        }
        if self.mqtt:
            self.mqtt.publish("events", {"type": "sensor", **payload})
        self._observe("sensor_change", **payload, mono=c.at)

    def _on_site_change(self, c: SiteChange) -> None:
        evac = c.new.value == "evacuating"
        (self.log.error if evac else self.log.warning)(
            "site", old=c.old.value, new=c.new.value, reason=c.reason, forced=c.forced
        )
        self.metrics.site_evacuating.set(1 if evac else 0)
        if evac:
            self.metrics.evacuations_total.labels(cause="operator" if c.forced else "rule").inc()
        payload = {
            "old": c.old.value,
            "new": c.new.value,
            "reason": c.reason,
            "forced": c.forced,
            "at": self._wall(c.at),
        }
        self._announce("site", payload, c.at, "site", self._site_json())

    def _on_dest_transition(self, t: Transition) -> None:
        """One resolved target of a multi-target trunk changed; the trunk may not have."""
        target, _, dest = t.target.partition("/")
        name = target.partition(":")[2]
        self.log.info(
            "destination transition",
            target=target,
            dest=dest,
            old=t.old.value,
            new=t.new.value,
            reason=t.reason,
        )
        self.metrics.trunk_target_up.labels(name, dest).set(1 if t.new is State.UP else 0)
        if self.mqtt:
            payload = {"state": t.new.value, "since": self._wall(t.at), "reason": t.reason}
            self.mqtt.publish(f"trunks/{name}/targets/{dest}", payload, retain=True)

    def _on_decision(self, d: Decision) -> None:
        g = self.engine.groups[d.group]
        self.log.warning(
            "route change",
            group=d.group,
            old=d.old_path,
            new=d.new_path,
            kind=d.kind,
            reason=d.reason,
        )
        m = self.metrics
        m.set_active_path(d.group, [p.name for p in g.spec.paths], d.new_path)
        if d.kind == "failover":
            m.failovers_total.labels(group=d.group).inc()
        elif d.kind == "failback":
            m.failbacks_total.labels(group=d.group).inc()
        self.pending[d.group] = _Pending(
            d.new_path, d.cause_at, d.at, {c.actuator.name for c in self.convergers}
        )
        payload = {
            "group": d.group,
            "old": d.old_path,
            "new": d.new_path,
            "kind": d.kind,
            "reason": d.reason,
            "at": self._wall(d.at),
        }
        self._announce("decision", payload, d.at, f"routes/{d.group}", self._route_json(d.group))
        if not self.convergers:
            self._applied(d.group, d.at)

    def _announce(
        self, what: str, event: dict[str, Any], mono: float, topic: str, retained: dict[str, Any]
    ) -> None:
        """Tell the world: retained per-object topic, the events stream, the observer."""
        if self.mqtt:
            self.mqtt.publish(topic, retained, retain=True)
            kind = "route" if what == "decision" else what
            self.mqtt.publish("events", {"type": kind, **event})
        self._observe(what, **event, mono=mono)

    def _push_desired(self) -> None:
        desired = self.engine.desired()
        for gname, g in self.engine.groups.items():
            self.metrics.route_no_path.labels(group=gname).set(1 if g.alarm else 0)
        if desired == self.pushed:
            return
        self.pushed = dict(desired)
        for c in self.convergers:
            c.set_desired(desired)

    def _on_report(self, r: ApplyReport) -> None:
        m = self.metrics
        m.actuator_converged.labels(actuator=r.actuator).set(1 if r.ok else 0)
        m.actuator_apply_seconds.labels(actuator=r.actuator).observe(r.finished_at - r.started_at)
        if not r.ok:
            m.actuator_errors_total.labels(
                actuator=r.actuator, reason=r.error_reason or "error"
            ).inc()
            self.log.error(
                "actuator failed, will retry",
                actuator=r.actuator,
                reason=r.error_reason,
                error=r.error,
                attempt=r.attempt,
                groups=sorted(r.failed_groups) or "all",
            )
            if not r.failed_groups:
                return
        elif r.trigger == "drift" and r.changed:
            self.log.warning("routing drifted and was re-applied", actuator=r.actuator)
        for group, pend in list(self.pending.items()):
            if group in r.failed_groups:
                continue  # the others were applied even though this one failed
            if r.desired.get(group) == pend.path:
                pend.waiting.discard(r.actuator)
                if not pend.waiting:
                    self._applied(group, r.finished_at)

    def _applied(self, group: str, at: float) -> None:
        pend = self.pending.pop(group, None)
        if pend is None:
            return
        reroute = at - pend.cause_at
        self.metrics.reroute_seconds.labels(group=group).observe(max(reroute, 0.0))
        self.log.info(
            "route applied",
            group=group,
            path=pend.path,
            apply_ms=round((at - pend.decided_at) * 1000, 2),
            reroute_ms=round(reroute * 1000, 1),
        )
        self._observe(
            "applied",
            group=group,
            path=pend.path,
            mono=at,
            apply_ms=(at - pend.decided_at) * 1000,
            reroute_ms=reroute * 1000,
        )

    def _observe(self, what: str, **fields: Any) -> None:
        if self.observer is not None:
            self.observer(what, fields)

    # ---- state views (status, MQTT) ---------------------------------------------------

    def _wall(self, mono: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mono + self.wall_offset)) + (
            f".{int(((mono + self.wall_offset) % 1) * 1000):03d}Z"
        )

    def _target_json(self, target: str) -> dict[str, Any]:
        th = self.engine.targets[target]
        out: dict[str, Any] = {
            "state": th.state.value,
            "since": self._wall(th.since),
            "reason": th.reason,
        }
        o = self.last_outcome.get(target)
        if o is not None:
            out["last_code"] = o.code
            out["last_rtt_ms"] = None if o.rtt is None else round(o.rtt * 1000, 2)
        if th.hold_until:
            out["hold_until"] = self._wall(th.hold_until)
        if len(th.dests) > 1 or any(th.dests):
            out["healthy_when"] = str(th.quorum)
            out["targets"] = {
                k: {"state": d.state.value, "reason": d.reason} for k, d in th.dests.items()
            }
        return out

    def _any_target_json(self, target: str) -> dict[str, Any]:
        return (
            self._target_json(target) if target in self.engine.targets else self._link_json(target)
        )

    def _link_json(self, target: str) -> dict[str, Any]:
        lh = self.engine.links[target]
        out: dict[str, Any] = {
            "state": lh.state.value,
            "since": self._wall(lh.since),
            "reason": lh.reason,
            "kernel": lh.seen.value,
        }
        if lh.seen_reason:
            out["kernel_reason"] = lh.seen_reason
        due = lh.due()
        if due is not None:
            out["settles_at"] = self._wall(due)
        return out

    def _sensor_json(self, sh: SensorHealth, now: float) -> dict[str, Any]:
        ttc = sh.time_to_critical(now)
        rate = sh.rate_per_minute()
        return {
            "state": sh.level.value,
            "since": self._wall(sh.since),
            "reason": sh.reason,
            "value": sh.value,
            "unit": sh.spec.unit,
            "read_at": None if sh.last_at is None else self._wall(sh.last_at),
            "rate_per_minute": None if rate is None else round(rate, 3),
            "time_to_critical_s": None if ttc is None else round(ttc, 1),
            "error": sh.error or None,
        }

    def _site_json(self) -> dict[str, Any]:
        site = self.engine.site
        return {
            "state": site.state.value,
            "since": self._wall(site.since),
            "reason": site.reason,
            "forced": site.forced,
            "rule_holds": site.holding,
            "return": site.spec.return_mode,
            "hold_s": site.spec.hold,
        }

    def _route_json(self, group: str) -> dict[str, Any]:
        g = self.engine.groups[group]
        states = self.engine.states()
        return {
            "active": g.active,
            "active_paths": g.members(),
            "mode": g.spec.mode,
            "pinned": g.pinned,
            "evacuated": g.evacuated,
            "alarm": g.alarm,
            "ready": g.ready,
            "failback": g.spec.failback,
            "hold_s": g.spec.hold,
            "paths": [
                {
                    "name": p.name,
                    "remote": p.remote,
                    "requires": list(p.requires),
                    "qualifies": all(states.get(t) is State.UP for t in p.requires),
                }
                for p in g.spec.paths
            ],
        }

    def snapshot(self) -> dict[str, Any]:
        self.seq += 1
        now = self.clock()
        return {
            "schema": 1,
            "seq": self.seq,
            "site": self.cfg.site,
            "node": self.cfg.node,
            "version": __version__,
            "uptime_s": round(now - self.started, 1),
            "targets": {t: self._target_json(t) for t in self.engine.targets},
            "links": {t: self._link_json(t) for t in self.engine.links},
            "sensors": {n: self._sensor_json(sh, now) for n, sh in self.engine.sensors.items()},
            "evacuation": self._site_json(),
            "routes": {g: self._route_json(g) for g in self.engine.groups},
            "actuators": {c.actuator.name: {"converged": c.converged} for c in self.convergers},
            "mqtt": None if self.mqtt is None else {"connected": self.mqtt.connected},
        }

    def _publish_state(self) -> None:
        if self.mqtt is not None:
            self.mqtt.publish("state", self.snapshot(), retain=True)

    # ---- operator commands over the control socket ----------------------------------

    async def _control(self, req: dict[str, Any]) -> Any:
        cmd, now = req["cmd"], self.clock()
        try:
            if cmd == "status":
                return self.snapshot()
            if cmd == "failover":
                step = self.engine.failover(str(req.get("group")), str(req.get("path")), now)
            elif cmd == "failback":
                step = self.engine.failback(str(req.get("group")), now)
            elif cmd == "maintenance" and req.get("target") == "site":
                step = self.engine.evacuate(bool(req.get("on")), now)
            elif cmd == "maintenance":
                target = self._resolve_target(str(req.get("target")))
                step = self.engine.set_maintenance(target, bool(req.get("on")), now)
            else:
                raise ControlError(f"unknown command {cmd!r}")
        except (KeyError, ValueError) as e:
            raise ControlError(str(e.args[0] if e.args else e)) from None
        self.log.warning(
            "operator command", cmd=cmd, **{k: v for k, v in req.items() if k != "cmd"}
        )
        self._handle(step)
        self._save()
        return {
            "decisions": [d.new_path for d in step.decisions],
            "routes": {g: self.engine.groups[g].active for g in self.engine.groups},
        }

    def _resolve_target(self, name: str) -> str:
        every = [*self.engine.targets, *self.engine.links]
        if name in every:
            return name
        matches = [t for t in every if t.partition(":")[2] == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(
            f"unknown target {name!r}"
            if not matches
            else f"ambiguous target {name!r}: use one of {', '.join(matches)}"
        )


def _quiet_gc() -> None:
    """Move what start-up built (config, health machines, schedule) out of the cyclic GC.

    At 10,000 trunks full collections of those long-lived objects took ~40% of a core
    in 300 ms stop-the-world pauses; per-probe garbage is short-lived and acyclic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run_daemon(config_path: str, cfg: Config, **kw: Any) -> int:
    return await Daemon(config_path, cfg, **kw).run()
