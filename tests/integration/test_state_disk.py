"""A full or read-only state directory: routing goes on, the agent says once that it
cannot save its intent, and says so again when saving works again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent, Event

pytestmark = pytest.mark.integration


def config(tmp: Path, state: Path, port_a: int, port_b: int) -> Path:
    cfg = tmp / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
state_dir: {state}
control: {{socket: {tmp}/control.sock}}
metrics: null
probe: {{interval: 500ms, fast_interval: 100ms, timeout: 300ms, rise: 1, fall: 2}}
trunks:
  a: {{uri: "sip:127.0.0.1:{port_a}"}}
  b: {{uri: "sip:127.0.0.1:{port_b}"}}
routes:
  out:
    hold: 1s
    paths:
      - {{name: a, requires: [trunk:a]}}
      - {{name: b, requires: [trunk:b]}}
""")
    return cfg


def failed(e: Event) -> bool:
    return e.get("event") == "cannot save state, routing goes on"


def test_a_full_state_disk_is_said_once_and_routing_goes_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    port_a, port_b = procs.free_port(), procs.free_port()
    # The agent gets a mount namespace of its own with a full 16 KiB tmpfs as state_dir.
    fill = f"mount -t tmpfs -o size=16k tmpfs {state} && cat /dev/zero >{state}/fill 2>/dev/null"
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{fill}; exec "$@"', "-"]
    with sipp.options_responder(tmp_path, "127.0.0.1", port_b):
        agent = Agent(config(tmp_path, state, port_a, port_b), prefix=prefix)
        try:
            # Carrier a never answers: the group starts on b, then flaps between nothing.
            agent.wait_for(agent.applied("b"), 15, "route via b")
            err = agent.wait_for(failed, 10, "cannot save")
            assert "No space left on device" in err["error"], err
            with sipp.options_responder(tmp_path, "127.0.0.1", port_a):
                agent.wait_for(agent.applied("a"), 10, "failback to a")  # routing goes on
                mark = agent.mark()
            agent.wait_for(agent.applied("b"), 10, "failover to b again", mark)
            agent.drain()
            assert sum(1 for e in agent.events if failed(e)) == 1  # said once
            # Room again (seen through the agent's own mount namespace): saved, and said.
            root = Path(f"/proc/{agent.proc.pid}/root")
            (root / str(state).lstrip("/") / "fill").unlink()
            mark = agent.mark()
            with sipp.options_responder(tmp_path, "127.0.0.1", port_a):
                agent.wait_for(agent.applied("a"), 10, "failback to a again", mark)
                agent.wait_for(lambda e: e.get("event") == "state saved again", 10, "saved")
                saved = json.loads((root / str(state).lstrip("/") / "state.json").read_text())
            assert saved["active"]["out"] in ("a", "b")
        finally:
            agent.stop()
    assert not (state / "state.json").exists()  # the host's own directory was never touched
