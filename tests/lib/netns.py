"""Network namespaces and veth links for tests, cleaned up by the names we chose.

Every name starts with a per-run prefix so a crashed run can never collide with
(or delete) anything that is not ours.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

PREFIX = f"tg{os.getpid() % 100000}"
_counter = itertools.count()


def run(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, input=input, timeout=30
    )


def unique(tag: str) -> str:
    """A short unique name (interface names must stay under 16 bytes)."""
    return f"{PREFIX}{tag}{next(_counter)}"[:15]


class Netns:
    def __init__(self, tag: str) -> None:
        self.name = unique(tag)
        run("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def sh(
        self, *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(*self.exec_argv(*argv), check=check, input=input)

    def nft(self, script: str) -> None:
        self.sh("nft", "-f", "-", input=script)

    def drop_udp_in(self, port: int) -> None:
        """Silence a host: drop inbound UDP to a port, no ICMP back (the deadline path)."""
        self.nft(
            "table inet tgdrop { chain in { type filter hook input priority -10; "
            f"udp dport {port} drop; }}; }}\n"
        )

    def undrop(self) -> None:
        self.sh("nft", "delete", "table", "inet", "tgdrop", check=False)

    def delete(self) -> None:
        # Kill anything still running inside before the namespace goes away.
        pids = run("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        run("ip", "netns", "delete", self.name, check=False)


def veth(a: Netns, a_addr: str, b: Netns, b_addr: str) -> tuple[str, str]:
    """Connect two namespaces with a veth pair; addresses in CIDR form. Returns the names."""
    ia, ib = unique("a"), unique("b")
    run(
        "ip",
        "link",
        "add",
        ia,
        "netns",
        a.name,
        "type",
        "veth",
        "peer",
        "name",
        ib,
        "netns",
        b.name,
    )
    a.ip("addr", "add", a_addr, "dev", ia)
    b.ip("addr", "add", b_addr, "dev", ib)
    a.ip("link", "set", ia, "up")
    b.ip("link", "set", ib, "up")
    return ia, ib


@contextmanager
def namespaces(*tags: str) -> Iterator[list[Netns]]:
    made: list[Netns] = []
    try:
        for tag in tags:
            made.append(Netns(tag))
        yield made
    finally:
        for ns in made:
            ns.delete()
