"""Incidents and the operator's out-of-band notices, end to end: carrier A goes silent,
the agent fails over and opens an incident (cause, impact, evidence) that is retained
on MQTT, shown in `status`, posted to a webhook with the operator's template and
mailed through a real SMTP server (aiosmtpd); a receiver that never answers delays
nothing; carrier A comes back and the incident is closed everywhere."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from queue import Queue
from typing import Any

import aiomqtt
import pytest
from aiosmtpd.controller import Controller

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent
from tests.lib.mosquitto import broker
from tests.lib.webhook import receiver, wait_doc

pytestmark = pytest.mark.integration


@contextmanager
def smtp_server() -> Iterator[tuple[int, Queue[EmailMessage]]]:
    """A real SMTP server on loopback; every message received, parsed."""
    got: Queue[EmailMessage] = Queue()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.put(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    port = procs.free_port(socket.SOCK_STREAM)
    c = Controller(Handler(), hostname="127.0.0.1", port=port)
    c.start()
    try:
        yield port, got
    finally:
        c.stop()


@contextmanager
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung receiver)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_an_incident_is_opened_notified_and_closed(tmp_path: Path) -> None:
    pa, pb = procs.free_port(), procs.free_port()
    with (
        receiver() as (hook, posts),
        smtp_server() as (smtp, mails),
        black_hole() as hung,
        broker(tmp_path) as mq,
        sipp.options_responder(tmp_path, "127.0.0.1", pb),
        ExitStack() as carrier_a,
    ):
        cfg = tmp_path / "trunkguard.yaml"
        cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp_path}/control.sock}}
metrics: null
probe: {{interval: 500ms, fast_interval: 200ms, timeout: 300ms, rise: 1, fall: 2}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{pa}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{pb}"}}
routes:
  outbound:
    hold: 1h
    paths:
      - {{name: a, requires: [trunk:carrier-a]}}
      - {{name: b, requires: [trunk:carrier-b]}}
mqtt: {{host: 127.0.0.1, port: {mq.port}, keepalive: 2s}}
notify:
  chat:
    webhook: {{url: "http://127.0.0.1:{hook}/hooks/T0K3N"}}
    template: >-
      {{"text": "{{{{ incident.severity }}}} {{{{ event }}}}: {{{{ incident.cause }}}}",
       "impact": {{{{ incident.impact | tojson }}}}}}
  mail:
    email: {{smtp: "127.0.0.1:{smtp}", from: tg@example.net, to: [noc@example.net]}}
  hung:
    webhook: {{url: "http://127.0.0.1:{hung}/x", timeout: 2s, retries: 1}}
  only-critical:
    webhook: {{url: "http://127.0.0.1:{hook}/critical"}}
    severity: [critical]
""")
        carrier_a.enter_context(sipp.options_responder(tmp_path, "127.0.0.1", pa))
        agent = Agent(cfg)
        try:
            agent.wait_for(Agent.applied("a"), 20, "initial route")
            carrier_a.close()  # carrier A goes silent
            applied = agent.wait_for(Agent.applied("b"), 20, "failover to b")
            # A receiver that never answers (2 s timeout, a retry) delayed nothing.
            assert applied["reroute_ms"] < 1000, applied

            path, doc = wait_doc(posts, lambda p, d: "opened" in d.get("text", ""), 15)
            assert path == "/hooks/T0K3N"
            assert doc["text"].startswith("major opened: trunk:carrier-a down:")
            assert doc["impact"] == {"outbound": "a → b"}
            mail = mails.get(timeout=15)
            assert mail["Subject"].startswith("[trunkguard dc1] major opened: trunk:carrier-a down")
            assert mail["To"] == "noc@example.net"
            assert "route group outbound: a → b" in mail.get_content()

            opened = agent.wait_for(lambda e: e.get("event") == "incident opened", 5, "logged")
            iid = opened["id"]
            status = subprocess.run(
                [sys.executable, "-m", "trunkguard", "status", "--json", "--socket",
                 str(tmp_path / "control.sock")],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            [inc] = json.loads(status.stdout)["incidents"]
            assert (inc["id"], inc["state"], inc["severity"]) == (iid, "open", "major")
            assert any("trunk:carrier-a up → down" in line for line in inc["evidence"])
            text = subprocess.run(
                [sys.executable, "-m", "trunkguard", "status", "--socket",
                 str(tmp_path / "control.sock")],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            assert "INCIDENT major since" in text and "(outbound: a → b)" in text

            carrier_a.enter_context(sipp.options_responder(tmp_path, "127.0.0.1", pa))
            wait_doc(posts, lambda p, d: "closed" in d.get("text", ""), 15)
            closed_mail = mails.get(timeout=15)
            assert "major closed" in closed_mail["Subject"]
            assert "Closed:" in closed_mail.get_content()

            async def retained() -> dict[str, Any]:
                async with aiomqtt.Client("127.0.0.1", mq.port) as c:
                    await c.subscribe(f"trunkguard/dc1/sbc1/incidents/{iid}")
                    async with asyncio.timeout(5):
                        async for m in c.messages:
                            doc = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                            if doc["state"] == "closed":
                                return dict(doc)
                return {}

            doc = asyncio.run(retained())
            assert doc["duration_s"] > 0 and doc["site"] == "dc1"
            # Nothing was critical: the critical-only notifier sent nothing.
            assert all(p != "/critical" for p, _ in list(posts.queue))
            # The hung receiver timed out (said once per reason), without the URL's secret.
            fail = agent.wait_for(
                lambda e: e.get("event") == "notice not delivered", 15, "the hung receiver"
            )
            assert fail["notifier"] == "hung" and "timed out" in fail["error"]
            agent.drain()
            assert not any("T0K3N" in line for line in agent.raw)
        finally:
            agent.stop()
