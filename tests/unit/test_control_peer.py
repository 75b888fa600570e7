"""Who may use the control socket: root, the daemon's user, or a member of its group,
read from the kernel's peer credentials (the primary group and SO_PEERGROUPS)."""

from __future__ import annotations

import os
import socket

from trunkguard.control import _peer, allowed


def test_supplementary_groups_come_from_the_kernel() -> None:
    """A client that is another user with supplementary groups (as root, like the
    tests: fork, drop to uid 1000 with groups 4321 and 555, connect). An abstract
    socket: no directory the other user would need to reach."""
    path = f"\0trunkguard-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.settimeout(10)
        srv.bind(path)
        srv.listen(1)
        pid = os.fork()
        if pid == 0:  # the client
            try:
                os.setgroups([4321, 555])
                os.setgid(1000)
                os.setuid(1000)
                with socket.socket(socket.AF_UNIX) as c:
                    c.connect(path)
                    c.recv(1)
            finally:
                os._exit(0)
        conn, _ = srv.accept()
        with conn:
            uid, groups = _peer(conn)
            conn.send(b"x")
        os.waitpid(pid, 0)
    assert uid == 1000 and groups == {1000, 4321, 555}


def test_root_the_daemon_user_and_its_group_only() -> None:
    me, my_group = os.getuid(), os.getgid()
    assert allowed(0, set())
    assert allowed(me, set())
    assert allowed(64_000, {my_group})  # an operator in the daemon's group
    if me != 64_000 and my_group != 64_001:
        assert not allowed(64_000, {64_001})
