"""The composition root: config -> core, sinks and features -> supervised tasks.

Long-lived for the whole process: the core (Engine), the hub, the sinks, the
metrics listener, the MQTT session and the control socket. A "generation" is what
the features build from the config (inputs, actuators, their tasks); a SIGHUP reload
replaces it while the core keeps every target's state. Nothing here decides routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from trunkguard import __version__, persist
from trunkguard.act.converge import Converger
from trunkguard.bus.mqtt import MqttPublisher
from trunkguard.commands import Commands
from trunkguard.config import Config, ConfigError, load_config
from trunkguard.control import ControlServer
from trunkguard.core.engine import Engine
from trunkguard.core.ids import TargetId, trunk
from trunkguard.drills import Drills
from trunkguard.features import FEATURES
from trunkguard.features.base import Context
from trunkguard.features.calls import Caller, call
from trunkguard.hub import Hub
from trunkguard.obs import page, systemd
from trunkguard.obs.http import Query
from trunkguard.obs.logging import configure_logging, get_logger
from trunkguard.obs.metrics import Metrics
from trunkguard.sinks import views
from trunkguard.sinks.alarms import AlarmSink
from trunkguard.sinks.incidents import IncidentSink
from trunkguard.sinks.intent import IntentSink
from trunkguard.sinks.latency import LatencySink
from trunkguard.sinks.log import LogSink
from trunkguard.sinks.metrics import MetricsSink
from trunkguard.sinks.mqtt import MqttSink
from trunkguard.sinks.recent import RecentSink
from trunkguard.tasks import supervise

RESTART_ONLY = ("site", "node", "mqtt", "metrics", "control", "state_dir")


class App:
    def __init__(
        self,
        config_path: str,
        cfg: Config,
        *,
        json_logs: bool | None = None,
        attach: Callable[[Hub], None] | None = None,  # an observer (the lab) subscribes
    ) -> None:
        self.config_path, self.cfg, self.json_logs = config_path, cfg, json_logs
        configure_logging(cfg.log_level, json_logs)
        self.log = get_logger("trunkguard")
        clock = time.monotonic
        self.started = clock()
        self.wall = views.Wall(self.started, time.time())
        self.metrics = Metrics(mqtt_enabled=cfg.mqtt is not None)
        engine = Engine(cfg.core_spec(), self.started)
        intent, problem = persist.load(cfg.state_dir)
        if problem:
            self.log.warning("state file unusable", problem=problem)
        engine.restore(intent, self.started)
        self.hub = hub = Hub(engine, clock)
        self.mqtt: MqttPublisher | None = None
        if cfg.mqtt is not None:
            self.mqtt = MqttPublisher(
                cfg.mqtt.settings(cfg.site, cfg.node),
                log=self.log,
                on_connected=self._mqtt_up,
                epochs=partial(persist.next_epoch, cfg.state_dir),
            )
        LogSink(hub, self.log)
        self.metrics_sink = MetricsSink(hub, self.metrics)
        LatencySink(hub, self.metrics, self.log)
        self.intent = IntentSink(hub, cfg.state_dir, self.log)
        self.recent = RecentSink(hub, self.wall)
        self.mqtt_sink: MqttSink | None = None
        if self.mqtt is not None and cfg.mqtt is not None:
            beat, expiry = cfg.mqtt.heartbeat, cfg.mqtt.expiry()
            self.mqtt_sink = MqttSink(hub, self.mqtt, self.facts, beat, expiry)
        self.alarms = AlarmSink(hub, self.facts, self.log, self.mqtt)
        self.incidents = IncidentSink(hub, self.wall, self.log, self.mqtt, cfg.site, cfg.node)
        self.caller = Caller(hub, self.metrics, self.log)
        self.drills = Drills(
            hub, self._drill_call, self.wall, self._drill_report, self._roles, self._settings
        )
        self.commands = Commands(hub, self.status, self.intent.request, self.log, self.drills)
        if attach is not None:
            attach(hub)
        self._wake = asyncio.Event()
        self._stop = self._reload = False

    def facts(self) -> views.Facts:
        return views.Facts(
            self.cfg.site,
            self.cfg.node,
            self.started,
            self.wall,
            self.hub.probes,
            {c.actuator.name: c.converged for c in self.hub.convergers},
            None if self.mqtt is None else self.mqtt.connected,
            {
                call(n): (self.hub.passed.get(call(n), self.started), c.max_age)
                for n, c in self.cfg.calls.items()
            },
        )

    def status(self) -> dict[str, Any]:
        doc = views.snapshot(self.hub.engine, self.hub.clock(), self.facts())
        doc["incidents"] = self.incidents.view()
        return {**doc, "seq": 0 if self.mqtt_sink is None else self.mqtt_sink.seq}

    def _page(self, _query: Query) -> tuple[str, Iterator[bytes]]:
        """GET /: rendered on the loop (the core is not shared with the HTTP threads)."""

        async def render() -> str:
            return page.render(self.status(), list(self.recent.events))

        html = asyncio.run_coroutine_threadsafe(render(), self._loop).result(timeout=2)
        return "text/html; charset=utf-8", iter([html.encode()])

    async def _drill_call(self, target: TargetId) -> tuple[bool, str, float | None] | None:
        """A drill's call through a path: its call check, now (None: not configured)."""
        c = self.cfg.calls.get(target.name)
        if c is None:
            return None
        ok, reason, r = await self.caller.check(target.name, c, by="drill")
        return ok, reason, None if r is None else r.answered_s

    def _roles(self) -> dict[TargetId, str]:
        return {trunk(n): t.role for n, t in self.cfg.trunks.items()}

    def _settings(self, group: str) -> dict[str, Any]:
        """The settings a drill ran with, for its report."""
        p, g = self.cfg.probe, self.cfg.routes.get(group)
        out: dict[str, Any] = {
            "probe": f"every {p.interval:g}s (fast {p.fast_interval:g}s), "
            f"timeout {p.timeout:g}s, rise {p.rise}, fall {p.fall}",
        }
        if g is not None:
            out["group"] = f"failback {g.failback}, hold {g.hold:g}s"
        if self.cfg.calls:
            out["calls"] = ", ".join(
                f"{n}: answer within {c.answer_within:g}s, tone {c.duration:g}s"
                for n, c in self.cfg.calls.items()
            )
        return out

    def _drill_report(self, report: dict[str, Any]) -> None:
        scenario = report["scenario"]
        self.metrics.drills_total.labels(scenario, report["result"]).inc()
        for phase, seconds in report["phases"].items():
            self.metrics.drill_seconds.labels(scenario, phase).set(seconds)
        if self.mqtt is not None:
            self.mqtt.publish(f"drills/{report['id']}", report)
            self.mqtt.publish("drills/last", report, retain=True)
        self.log.warning(
            "drill done", id=report["id"], result=report["result"], phases=report["phases"]
        )

    def _mqtt_up(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)
        if self.mqtt is not None:
            self.hub.session(up, self.mqtt.epoch)

    def request_stop(self) -> None:
        self._stop = True
        self._wake.set()

    def _request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    async def run(self) -> int:
        self._loop = loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        control = ControlServer(self.cfg.control.socket, self.commands.handle, self.log)
        stop_metrics: Callable[[], None] | None = None
        try:
            if self.cfg.metrics is not None:
                stop_metrics = self.metrics.serve(*self.cfg.metrics.host_port, {"/": self._page})
            await control.start()
        except OSError as e:
            self.log.error("cannot start", error=str(e))
            if stop_metrics:
                stop_metrics()
            return 1
        try:
            async with asyncio.TaskGroup() as tg:
                await self._serve(tg)
        finally:
            await control.close()
            if stop_metrics:
                stop_metrics()
        return 0

    async def _serve(self, tg: asyncio.TaskGroup) -> None:
        background = [
            ("loop-lag", self.metrics.watch_loop_lag),
            ("state-writer", self.intent.run),
            ("alarms", self.alarms.run),
            *([("mqtt", self.mqtt.run)] if self.mqtt else []),
            *([("heartbeat", self.mqtt_sink.run)] if self.mqtt_sink else []),
        ]
        tasks = [tg.create_task(supervise(n, fn, self.log)) for n, fn in background]
        if wd := systemd.watchdog_interval():
            tasks.append(tg.create_task(systemd.watchdog_loop(wd)))
        gen = tg.create_task(self._generation())
        if self.mqtt_sink:
            self.mqtt_sink.publish_state()
        systemd.ready(f"probing {len(self.cfg.trunks)} trunks")
        _quiet_gc()
        asyncio.get_running_loop().call_later(max(self.cfg.probe.interval, 1.0) * 5, _quiet_gc)
        cfg = self.cfg
        self.log.info(
            "started",
            version=__version__,
            site=cfg.site,
            node=cfg.node,
            trunks=len(cfg.trunks),
            groups=len(cfg.routes),
        )
        while not self._stop:
            await self._wake.wait()
            self._wake.clear()
            if self._reload and not self._stop:
                self._reload = False
                if self._reload_config():
                    gen.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gen
                    gen = tg.create_task(self._generation())
        systemd.stopping()
        self.log.info("stopping: routes are left as they are")
        gen.cancel()
        await self.intent.flush()
        if self.mqtt is not None and self.mqtt_sink is not None:
            self.mqtt_sink.publish_state()
            await self.mqtt.stop()
        for t in tasks:
            t.cancel()

    def _reload_config(self) -> bool:
        systemd.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            for p in e.problems:
                self.log.error("reload rejected, keeping the running config", problem=p)
            self.metrics.config_reload_total.labels(result="error").inc()
            systemd.ready("reload rejected")
            return False
        changed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(self.cfg, k)]
        if changed:
            self.log.warning("these settings change only on restart", keys=changed)
            new = new.model_copy(update={k: getattr(self.cfg, k) for k in changed})
        self.cfg = new
        configure_logging(new.log_level, self.json_logs)
        self.hub.emit(self.hub.engine.reconfigure(new.core_spec(), self.hub.clock()))
        self.metrics_sink.configured(self.hub.engine)
        self.metrics.config_reload_total.labels(result="ok").inc()
        self.log.info("config reloaded", trunks=len(new.trunks), groups=len(new.routes))
        systemd.ready("reloaded")
        return True

    async def _generation(self) -> None:
        cfg, hub = self.cfg, self.hub
        env = {"TRUNKGUARD_SITE": cfg.site, "TRUNKGUARD_NODE": cfg.node}
        ctx = Context(
            cfg,
            hub,
            self.metrics,
            self.log,
            self.mqtt,
            env,
            self.commands.execute,
            self.drills,
            self.caller,
            self.incidents,
        )
        parts = [f.build(ctx) for f in FEATURES]
        a = cfg.actuators
        converger = partial(
            Converger,
            drift_interval=a.drift_interval,
            on_report=hub.report,
            backoff_initial=a.backoff_initial,
            backoff_max=a.backoff_max,
        )
        hub.attach([converger(act) for p in parts for act in p.actuators])
        if self.mqtt is not None:
            self.mqtt.set_subscriptions(ctx.topics, frozenset(ctx.as_published))
        try:
            async with asyncio.TaskGroup() as tg:
                for c in hub.convergers:
                    tg.create_task(supervise(f"actuator {c.actuator.name}", c.run, self.log))
                for name, fn in [t for p in parts for t in p.tasks]:
                    tg.create_task(supervise(name, fn, self.log))
                tg.create_task(supervise("timers", hub.timers, self.log))
                # Groups that depend on nothing (and site rules) are decided now, not
                # at the first transition that happens to feed them.
                hub.emit(hub.engine.tick(hub.clock()))
                hub.push_desired()
                self.metrics_sink.batch(())
        finally:
            for close in [c for p in parts for c in p.close]:
                close()
            for c in hub.convergers:
                with contextlib.suppress(Exception):
                    await c.actuator.close()


def _quiet_gc() -> None:
    """Move what start-up built (config, health machines, schedule) out of the cyclic GC.

    At 10,000 trunks full collections of those long-lived objects took ~40% of a core
    in 300 ms stop-the-world pauses; per-probe garbage is short-lived and acyclic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run_app(config_path: str, cfg: Config, **kw: Any) -> int:
    return await App(config_path, cfg, **kw).run()
