"""The read-only status page, loaded by a real headless Chromium: content, escaping of
what the network sends (a carrier's reason phrase carrying markup), the security
headers, and a screenshot kept as an artifact of the test."""

from __future__ import annotations

import http.client
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent

pytestmark = pytest.mark.integration

HOSTILE = '<img src=x onerror="document.title=1">&amp;"\''


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "chromium",
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1280,900",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


def test_status_page_in_chromium(tmp_path: Path) -> None:
    good, bad = procs.free_port(), procs.free_port()
    http_port = procs.free_port(socket.SOCK_STREAM)
    scenario = sipp.SCENARIO.format(code=403, reason=HOSTILE)
    cfg = tmp_path / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp_path}/control.sock}}
metrics: {{listen: "127.0.0.1:{http_port}"}}
probe: {{interval: 500ms, fast_interval: 200ms, timeout: 400ms, rise: 1, fall: 1}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{bad}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{good}"}}
routes:
  outbound:
    paths:
      - {{name: via-a, requires: [trunk:carrier-a]}}
      - {{name: via-b, requires: [trunk:carrier-b]}}
""")
    with (
        sipp.uas(tmp_path, "hostile", scenario, "127.0.0.1", bad),
        sipp.options_responder(tmp_path, "127.0.0.1", good),
    ):
        agent = Agent(cfg)
        try:
            agent.wait_for(Agent.applied("via-b"), 15, "route via b")
            agent.wait_for(Agent.transition("trunk:carrier-a", "down"), 15, "a down")
            url = f"http://127.0.0.1:{http_port}/"

            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            raw = resp.read().decode()
            assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/html")
            assert "default-src 'none'" in (resp.getheader("Content-Security-Policy") or "")
            assert HOSTILE not in raw and "&lt;img src=x onerror=" in raw  # escaped once

            out = chromium(tmp_path, "--dump-dom", url)
            assert out.returncode == 0, out.stderr[-2000:]
            dom = out.stdout
            # What a person sees: trunks, the route group on its path, the events.
            for text in ("trunkguard dc1/sbc1", "carrier-a", "carrier-b", "via-b", "Last events"):
                assert text in dom, text
            assert "&lt;img src=x onerror=" in dom  # shown as text...
            assert "<img" not in dom and "<script" not in dom  # ...never made an element
            assert "<title>trunkguard dc1/sbc1</title>" in dom  # onerror never ran

            shot = tmp_path / "status-page.png"
            out = chromium(tmp_path, f"--screenshot={shot}", url)
            assert out.returncode == 0, out.stderr[-2000:]
            png = shot.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = struct.unpack(">II", png[16:24])
            assert (width, height) == (1280, 900)
            assert len(png) > 20_000, len(png)  # tables and text, not a blank page
        finally:
            agent.stop()
