"""A real systemd as PID 1 in a systemd-nspawn container, to test the shipped unit.

The root filesystem (Debian minbase with systemd, then trunkguard installed by
`scripts/install --wheels`, exactly as an admin would) is built once per machine into
CACHE and reused; a boot layers a tmpfs over it (--volatile=overlay), so the cache stays
pristine. Two layers, each built under a temporary name and renamed into place:
  base-<key>   mmdebstrap of PACKAGES (key: suite, packages, apt sources)      ~20 s
  image-<key>  base + wheels + scripts/install (key: base, the package's source,
               the install inputs): a source change rebuilds only this         ~15 s
Every container runs with --private-network: nothing it does reaches the host's routes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("TRUNKGUARD_TEST_CACHE", "/var/cache/trunkguard-tests"))
SUITE = "bookworm"  # its python3 is 3.11, the wheels are built by the host's 3.11
PYTHON = (3, 11)
PACKAGES = ("systemd", "dbus", "python3", "python3-venv", "iproute2", "procps")
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")  # the host's mirrors, if it has them
MIRROR = str(SOURCES) if SOURCES.exists() else "http://deb.debian.org/debian"
LAYOUT = "1"  # bump when the way images are built changes
# What goes into the image besides the package's source (agent/trunkguard, pyproject).
INSTALL_INPUTS = (
    "pyproject.toml",
    "scripts/install",
    "systemd/trunkguard.service",
    "systemd/trunkguard.sysusers.conf",
    "configs/example.yaml",
)
TOOLS = ("systemd-nspawn", "mmdebstrap", "nsenter")
PRUNE_AFTER = 3600.0  # other images unused this long are removed when one is built
# A hybrid cgroup host (v1 controllers, as on many CI machines): give the container's
# systemd a pure cgroup v2 tree. Needed here, harmless on a unified host.
ENV = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass(frozen=True)
class Image:
    rootfs: Path
    wheels: Path  # what scripts/install was given: bind it to re-run the install


def _run(argv: list[str], what: str, timeout: float = 600) -> None:
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-3000:]
        raise RuntimeError(f"{what} failed ({res.returncode}): {' '.join(argv)}\n{tail}")


def _files_digest(repo: Path, paths: list[Path]) -> bytes:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(repo)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.digest()


def _source_files(repo: Path) -> list[Path]:
    pkg = repo / "agent" / "trunkguard"
    return sorted(
        p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.relative_to(pkg).parts
    )


def base_key() -> str:
    h = hashlib.sha256(f"{LAYOUT}\0{SUITE}\0{' '.join(PACKAGES)}\0".encode())
    h.update(SOURCES.read_bytes() if SOURCES.exists() else MIRROR.encode())
    return h.hexdigest()[:16]


def image_key(repo: Path) -> str:
    h = hashlib.sha256(f"{base_key()}\0python{PYTHON}\0".encode())
    h.update(_files_digest(repo, [repo / p for p in INSTALL_INPUTS] + _source_files(repo)))
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder per machine at a time; others wait, then find the result."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)  # atomic: a reader sees nothing or the whole tree
    except OSError:
        shutil.rmtree(tmp)
        if not final.is_dir():
            raise


def _base() -> Path:
    final = CACHE / f"base-{base_key()}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=CACHE))
    try:
        rootfs = tmp / "rootfs"
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            "mmdebstrap",
        )
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _wheels(repo: Path, out: Path) -> None:
    """The package and its dependencies as wheels, built by the host's pip from a copy
    of the source (building in the checkout would leave build/ and egg-info there)."""
    if sys.version_info[:2] != PYTHON:
        raise RuntimeError(f"the container's python is {PYTHON}: run the tests with that")
    with tempfile.TemporaryDirectory(prefix="tg-wheel-src-") as src:
        shutil.copytree(
            repo / "agent" / "trunkguard",
            Path(src) / "agent" / "trunkguard",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(repo / name, Path(src) / name)
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
        _run([*pip, "-w", str(out), src], "pip wheel")


def _install(rootfs: Path, repo: Path, wheels: Path) -> None:
    """scripts/install, unchanged, inside the image (not booted: it skips daemon-reload)."""
    _run(
        [
            "systemd-nspawn",
            "-q",
            "-D",
            str(rootfs),
            "--private-network",
            "--register=no",
            "--keep-unit",
            f"--machine=tg-build-{secrets.token_hex(4)}",
            f"--bind-ro={repo}:/src",
            f"--bind-ro={wheels}:/wheels",
            "/src/scripts/install",
            "--wheels",
            "/wheels",
        ],
        "scripts/install in the image",
    )


def _prune(keep: set[Path]) -> None:
    now = time.time()
    for p in CACHE.iterdir():
        if p in keep or not p.is_dir():
            continue
        if now - p.stat().st_mtime > PRUNE_AFTER:
            shutil.rmtree(p, ignore_errors=True)


def image(repo: Path) -> Image:
    """The installed root filesystem for the current source, built if missing."""
    final = CACHE / f"image-{image_key(repo)}"
    if not (final / "rootfs").is_dir():
        with _locked():
            if not (final / "rootfs").is_dir():
                base = _base()
                tmp = Path(tempfile.mkdtemp(prefix=".image-", dir=CACHE))
                try:
                    _wheels(repo, tmp / "wheels")
                    _run(
                        ["cp", "-a", "--reflink=auto", str(base / "rootfs"), str(tmp / "rootfs")],
                        "copy base",
                    )
                    _install(tmp / "rootfs", repo, tmp / "wheels")
                    _publish(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                _prune({base, final})
    os.utime(final)  # in use: not pruned by someone else's build
    return Image(final / "rootfs", final / "wheels")


def _container_leader(nspawn: int) -> int | None:
    """The container's PID 1 as the host sees it: nspawn's child whose NSpid ends in 1."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{nspawn}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{child}/status").read_text().splitlines():
                        if line.startswith("NSpid:") and line.split()[-1] == "1":
                            return int(child)
    return None


class Container:
    def __init__(self, nspawn: subprocess.Popen[bytes], leader: int) -> None:
        self.nspawn, self.leader = nspawn, leader

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """argv inside the container (all its namespaces, its root), as root."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=CONTAINER_ENV,
            check=False,
        )

    def check(self, *argv: str, input: str | None = None, timeout: float = 60) -> str:
        res = self.run(*argv, input=input, timeout=timeout)
        if res.returncode != 0:
            raise AssertionError(f"{argv} -> {res.returncode}\n{res.stdout}{res.stderr}")
        return res.stdout

    def write(self, path: str, text: str, mode: str = "0644", group: str = "root") -> None:
        """A file inside the container (root-owned), written in one step."""
        self.check("install", "-m", mode, "-g", group, "/dev/stdin", path, input=text)

    def wait_running(self, timeout: float) -> str:
        """systemctl is-system-running --wait, retried until the manager answers at all.
        'degraded' counts as booted: a minimal container on an arbitrary CI host may
        fail units that need what the host lacks; the tests check their own units."""
        end = time.monotonic() + timeout
        state = ""
        while time.monotonic() < end:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.nspawn.returncode})")
            left = max(1, int(end - time.monotonic()))
            res = self.run("timeout", str(left), "systemctl", "is-system-running", "--wait")
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)  # the manager's bus is not up yet: ask again
        raise TimeoutError(f"container not booted within {timeout}s (state {state!r})")


def _stop(proc: subprocess.Popen[bytes], leader: int | None, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    if leader is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)  # PID 1 of the namespace: takes all with it
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout)


@contextlib.contextmanager
def booted(
    img: Image, log: Path, binds: Mapping[Path, str] | None = None, timeout: float = 90
) -> Iterator[Container]:
    """Boot systemd from the cached image over a tmpfs; power off and clean up after."""
    name = f"tg-{os.getpid()}-{secrets.token_hex(3)}"
    argv = [
        "systemd-nspawn",
        "-q",
        "--boot",
        "-D",
        str(img.rootfs),
        "--volatile=overlay",  # writes go to a tmpfs: the cached image stays as built
        "--private-network",
        "--register=no",  # no machined on CI hosts
        "--keep-unit",  # stay in our own cgroup, no scope from a host systemd
        f"--machine={name}",
        "--console=read-only",
        *[f"--bind-ro={src}:{dst}" for src, dst in (binds or {}).items()],
    ]
    leader: int | None = None
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=ENV
        )
        try:
            end = time.monotonic() + 20
            while (leader := _container_leader(proc.pid)) is None:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"no container from systemd-nspawn; see {log}")
                time.sleep(0.05)
            box = Container(proc, leader)
            box.wait_running(timeout)
            yield box
        finally:
            _stop(proc, leader, 30)
            # nspawn refuses to rm -rf under a /run that is not a tmpfs (CI hosts)
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}", ignore_errors=True)
