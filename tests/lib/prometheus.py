"""Real Prometheus and Alertmanager (Debian's packages) on loopback, for the alerting
and dashboard tests; each stopped by PID, its files under the test's tmp dir."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.lib import procs

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "configs" / "prometheus" / "trunkguard.rules.yml"
ALERTMANAGER_CONFIG = REPO / "configs" / "alertmanager" / "alertmanager.yml"


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    log: Path

    def get(self, path: str, **query: str) -> Any:
        q = f"?{urllib.parse.urlencode(query)}" if query else ""
        with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=5) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a PromQL error)."""
        doc = self.get("/api/v1/query", query=expr)
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextmanager
def _serve(argv: list[str], url: str, log: Path, what: str) -> Iterator[Server]:
    with procs.started(argv, log=log) as proc:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {log.read_text()[-1500:]}")
            return _ready(url)

        procs.wait_for(up, 30, what, step=0.1)
        yield Server(url, log)


@contextmanager
def prometheus(
    tmp: Path,
    targets: list[str],
    *,
    labels: dict[str, str] | None = None,
    alertmanager: str | None = None,
    rules: Path | None = RULES,
    every: str = "1s",
) -> Iterator[Server]:
    """Prometheus scraping `targets` (host:port) as job "trunkguard" every `every`,
    evaluating `rules` that often, sending alerts to `alertmanager` (host:port)."""
    d = tmp / "prometheus"
    d.mkdir()
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "scrape_configs": [
            {
                "job_name": "trunkguard",
                "static_configs": [{"targets": targets, "labels": labels or {}}],
            }
        ],
    }
    if rules is not None:
        cfg["rule_files"] = [str(rules)]
    if alertmanager is not None:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = procs.free_port(socket.SOCK_STREAM)
    argv = [
        "prometheus",
        f"--config.file={d / 'prometheus.yml'}",
        f"--storage.tsdb.path={d / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _serve(argv, f"http://127.0.0.1:{port}", d / "prometheus.log", "prometheus") as s:
        yield s


@contextmanager
def alertmanager(tmp: Path, config: dict[str, Any]) -> Iterator[Server]:
    """Alertmanager with `config` (a loaded alertmanager.yml), clustering off."""
    d = tmp / "alertmanager"
    d.mkdir()
    (d / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = procs.free_port(socket.SOCK_STREAM)
    argv = [
        "prometheus-alertmanager",
        f"--config.file={d / 'alertmanager.yml'}",
        f"--storage.path={d / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with _serve(argv, f"http://127.0.0.1:{port}", d / "alertmanager.log", "alertmanager") as s:
        yield s
