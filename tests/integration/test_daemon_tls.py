"""TLS and TCP trunks through the real daemon against Kamailio: mutual TLS up, a wrong
CA down with reason `tls`, and that failure logged once per change, not per probe."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.lib import procs
from tests.lib.agentproc import Agent
from tests.lib.kamailio import kamailio, make_pki

pytestmark = pytest.mark.integration


def test_tls_tcp_and_wrong_ca(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path)
    tcp, tls = procs.free_port(socket.SOCK_STREAM), procs.free_port(socket.SOCK_STREAM)
    with kamailio(tmp_path, tcp_port=tcp, tls_port=tls, tls=pki, require_client_cert=True):
        cfg = tmp_path / "trunkguard.yaml"
        cfg.write_text(f"""\
site: lab
node: tls
control: {{socket: {tmp_path}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 1s, rise: 1, fall: 2}}
trunks:
  teams:  # by IP, with the certificate's name for SNI and verification
    uri: "sips:127.0.0.1:{tls}"
    tls:
      server_name: carrier.test
      ca_file: {pki.ca}
      cert_file: {pki.client_cert}
      key_file: {pki.client_key}
  tcp: {{uri: "sip:127.0.0.1:{tcp};transport=tcp"}}
  badca:
    uri: "sips:127.0.0.1:{tls}"
    tls: {{ca_file: {other.ca}, cert_file: {pki.client_cert}, key_file: {pki.client_key}}}
routes:
  outbound:
    paths:
      - {{name: teams, requires: [trunk:teams]}}
      - {{name: tcp, requires: [trunk:tcp]}}
""")
        agent = Agent(cfg)
        try:
            for name in ("teams", "tcp"):
                up = agent.wait_for(
                    agent.transition(f"trunk:{name}"),
                    15,
                    f"{name} verdict",
                )
                assert up["new"] == "up", up
            bad = agent.wait_for(
                agent.transition("trunk:badca"),
                15,
                "badca verdict",
            )
            assert bad["new"] == "down" and "certificate verify failed" in bad["reason"]
            agent.wait_for(agent.applied("teams"), 5, "route via the TLS trunk")
        finally:
            assert agent.stop() == 0
        tls_events = [
            e
            for e in agent.events
            if e.get("event") == "transport problem" and e.get("kind") == "tls"
        ]
        assert len(tls_events) == 1, tls_events  # once per change, not per probe
