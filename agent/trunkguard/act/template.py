"""A config file rendered from a Jinja2 template, and the program that reads it reloaded.

For PBXs whose routing lives in their own config (Asterisk pjsip.conf and dialplan,
FreeSWITCH gateways): the daemon hands the template the active path of every route
group (see configs/templates/README.md); the actuator writes the result atomically
when it differs from the file and runs the reload command. A reload that fails puts
the previous file back and reloads again, so the PBX is never left with a file it
refused (its next restart would load it).

The file is the read-back: a hand edit makes verify() False and the converger writes
the rendering back. The template is re-read on every apply, so an edited template
takes effect at the next apply or drift check. File contents are never logged: they
may hold trunk passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from trunkguard.act.base import ActuatorError, Desired
from trunkguard.obs.logging import get_logger
from trunkguard.procs import BASE_ENV, ProgramError, run_program

log = get_logger(__name__)

MESSAGE_MAX = 300  # characters of a template error kept in the one-line message

# Immutable: a template can read the context but never change it (no list.append,
# dict.update), and the sandbox refuses Python internals (__class__, __globals__...).
# It does not bound CPU or memory: templates are operator config, like the argv.
_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not ""
    autoescape=False,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class TemplateSpec:
    template: str  # path of a Jinja2 template file
    output: str  # the file to write
    reload: tuple[str, ...] | None = None  # argv run after a change (absolute program path)
    timeout: float = 10.0
    mode: int = 0o644

    def __post_init__(self) -> None:
        # Accept a list from config, but store a tuple so the spec stays hashable.
        if self.reload is not None:
            object.__setattr__(self, "reload", tuple(self.reload))
            if not self.reload or not os.path.isabs(self.reload[0]):
                raise ValueError("reload must be an argv starting with an absolute path")
        if not self.template or not self.output:
            raise ValueError("template and output must not be empty")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError("mode must be a permission mode such as 0o640")


def check_template(path: str) -> str | None:
    """For config validation: None when `path` reads and compiles, else one line
    with the line number. (Undefined variables show only when rendering.)"""
    try:
        _compile(_read_template(path), path)
    except ActuatorError as e:
        return e.message
    return None


class TemplateActuator:
    kind = "template"
    reads_before_write = True  # apply() renders and compares with the file itself

    def __init__(
        self,
        name: str,
        spec: TemplateSpec,
        context: Callable[[Desired], Mapping[str, Any]],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._spec = spec
        self._context = context
        self._env = {**BASE_ENV, **(env or {}), "TRUNKGUARD_OUTPUT": spec.output}
        self._compiled: tuple[str, jinja2.Template] | None = None  # (source, template)
        # A file was installed but not (yet) reloaded: the file no longer says what
        # the PBX runs, so verify() is False and the next apply() reloads. Set by the
        # writer thread just before the rename; in memory only (a crash in between
        # leaves a file that matches but was never loaded).
        self._pending = False

    async def apply(self, desired: Desired) -> bool:
        want, have = await self._render_and_read(desired)
        if have == want and not self._pending:
            return False
        if have != want:
            await asyncio.to_thread(self._install, want)
            log.info(
                "template wrote", actuator=self.name, output=self._spec.output, bytes=len(want)
            )
        if self._spec.reload is not None:
            await self._reload_or_restore(self._spec.reload)
        return True

    async def verify(self, desired: Desired) -> bool:
        if self._pending:
            return False
        want, have = await self._render_and_read(desired)
        return have == want

    async def close(self) -> None:
        """Nothing to release: each reload is awaited (or killed) by its call."""

    # -- rendering ---------------------------------------------------------------

    async def _render_and_read(self, desired: Desired) -> tuple[bytes, bytes | None]:
        variables = dict(self._context(desired))  # daemon state: built on the loop
        return await asyncio.to_thread(self._render_and_read_sync, variables)

    def _render_and_read_sync(self, variables: dict[str, Any]) -> tuple[bytes, bytes | None]:
        return self._render(variables), self._read_output()

    def _render(self, variables: dict[str, Any]) -> bytes:
        path = self._spec.template
        try:
            source = _read_template(path)
            cached = self._compiled
            if cached is not None and cached[0] == source:
                template = cached[1]
            else:
                template = _compile(source, path)
                self._compiled = (source, template)
        except ActuatorError as e:
            raise ActuatorError(e.reason, f"{self.name}: {e.message}") from None
        try:
            return template.render(variables).encode()
        except Exception as e:  # anything a template can raise: undefined, sandbox, 1/0...
            raise ActuatorError("render", f"{self.name}: {_render_error(path, e)}") from None

    def _read_output(self) -> bytes | None:
        try:
            with open(self._spec.output, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ActuatorError("read", f"{self.name}: {self._spec.output}: {_os_error(e)}") from e

    # -- writing -----------------------------------------------------------------

    @property
    def _prev(self) -> str:
        return self._spec.output + ".prev"

    def _install(self, data: bytes) -> None:
        """Replace the output atomically, keeping the file it replaces as .prev."""
        out = self._spec.output

        def before_rename() -> None:
            self._keep_previous()
            # From here the file on disk may be ours but not yet loaded.
            self._pending = self._spec.reload is not None

        try:
            old = os.stat(out)
        except FileNotFoundError:
            owner = None
        except OSError as e:
            raise ActuatorError("write", f"{self.name}: {out}: {_os_error(e)}") from e
        else:
            owner = (old.st_uid, old.st_gid)
        try:
            _atomic_write(out, data, self._spec.mode, owner, before_rename)
        except OSError as e:
            raise ActuatorError("write", f"{self.name}: {out}: {_os_error(e)}") from e

    def _keep_previous(self) -> None:
        """Make .prev the file now at the output; no output, no .prev (so a restore
        removes what we wrote rather than bringing back something older)."""
        out, prev = self._spec.output, self._prev
        directory, base = os.path.split(os.path.abspath(out))
        link = os.path.join(directory, f".{base}.prev-{secrets.token_hex(6)}")
        try:
            os.link(out, link)  # the old inode itself: content, mode and owner exact
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(prev)
            return
        except OSError:
            shutil.copy2(out, link)  # a filesystem without hard links
        try:
            os.replace(link, prev)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(link)
            raise

    def _restore(self) -> str:
        """Put .prev back over the output (a copy, so .prev stays), or remove the
        output when there was none before. Returns what it did, for the message."""
        out = self._spec.output
        try:
            with open(self._prev, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            _fsync_dir(os.path.dirname(os.path.abspath(out)))
            return "new file removed (there was none before)"
        _atomic_write(out, data, st.st_mode & 0o7777, (st.st_uid, st.st_gid), None)
        return "previous file restored"

    # -- reloading ---------------------------------------------------------------

    async def _reload_or_restore(self, argv: tuple[str, ...]) -> None:
        try:
            await self._reload(argv)
        except ProgramError as e:
            failed = f"{self.name}: {self._spec.output}: reload failed: {e.message}"
            try:
                restored = await asyncio.to_thread(self._restore)
            except OSError as e2:
                raise ActuatorError(
                    "reload", f"{failed}; and restoring also failed: {_os_error(e2)}"
                ) from e
            try:
                await self._reload(argv)
            except ProgramError as e2:
                raise ActuatorError(
                    "reload",
                    f"{failed}; and restoring also failed: reloading the previous file: "
                    f"{e2.message}",
                ) from e
            self._pending = False  # back on the previous file, loaded
            raise ActuatorError("reload", f"{failed}; {restored}") from e
        self._pending = False

    async def _reload(self, argv: tuple[str, ...]) -> None:
        await run_program(argv, timeout=self._spec.timeout, env=self._env)
        log.info("template reloaded", actuator=self.name, program=argv[0])


def _read_template(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ActuatorError("render", f"{path}: cannot read: {_os_error(e)}") from None
    except UnicodeDecodeError as e:
        raise ActuatorError("render", f"{path}: not UTF-8: {e.reason}") from None


def compile_text(source: str, name: str) -> jinja2.Template:
    """A template given inline (a notifier's message), compiled in the same sandbox;
    ActuatorError with the line on a syntax error."""
    return _compile(source, name)


def render_text(t: jinja2.Template, name: str, context: Mapping[str, Any]) -> str:
    """Render; ActuatorError naming the line on any error (an undefined variable too)."""
    try:
        return t.render(context)
    except Exception as e:
        raise ActuatorError("render", _render_error(name, e)) from None


def _compile(source: str, path: str) -> jinja2.Template:
    try:
        code = _ENV.compile(source, name=os.path.basename(path), filename=path)
    except jinja2.TemplateSyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else path
        raise ActuatorError("render", f"{where}: {_clip(e.message or str(e))}") from None
    except Exception as e:  # e.g. RecursionError on absurd nesting
        raise ActuatorError("render", f"{path}: {_clip(f'{type(e).__name__}: {e}')}") from None
    return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None))


def _render_error(path: str, e: Exception) -> str:
    # Jinja rewrites the traceback so that template frames carry the template's file
    # name and line; the innermost one is where it failed (inside a macro, too).
    lines = [n for f, n in traceback.walk_tb(e.__traceback__) if f.f_code.co_filename == path]
    where = f"{path}:{lines[-1]}" if lines else path
    what = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
    return f"{where}: {_clip(what)}"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


def _os_error(e: OSError) -> str:
    return e.strerror or str(e)


def _atomic_write(
    path: str,
    data: bytes,
    mode: int,
    owner: tuple[int, int] | None,
    before_rename: Callable[[], None] | None,
) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, rename it over
    `path` and fsync the directory: readers see the old file or the new, never a
    part, and a power cut leaves one of the two."""
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if owner is not None:
                # Keep the replaced file's owner (e.g. root:asterisk for a 0640 file
                # the PBX must read); not allowed when we are not root, which is fine.
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)  # after chown, which may clear set-id bits
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
