"""Out-of-band notices (section `notify`): incidents sent where the operator wants them,
filtered and worded by the operator.

    notify:
      noc-chat:
        webhook: {url: "https://chat.example.net/hooks/T0K3N", timeout: 5s, retries: 3}
        severity: [major, critical]
        template: '{"text": "{{ incident.severity }}: {{ incident.cause }}"}'
      oncall-mail:
        email: {smtp: "mail.example.net:587", starttls: true, from: tg@example.net,
                to: [noc@example.net], username: tg, password_file: /etc/trunkguard/smtp.pass}

Each notifier has a filter (severity, kind, events, sites), a sandboxed Jinja2 template
for its message (the template actuator's sandbox; checked against a sample incident
when the config is loaded), a bounded queue worked by its own task with a timeout and
retries, and a rate limit (`max_per_minute`): a flapping trunk cannot send a storm,
and what was held back is counted in the next message (`suppressed`). Routing never
waits for a notifier: offering a notice only queues it. URLs and passwords are never
logged (a chat webhook's URL is its secret).
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from pydantic import ConfigDict, Field, field_validator, model_validator

from trunkguard.act.base import ActuatorError
from trunkguard.act.template import compile_text, render_text
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Duration, Lines, Strict

if TYPE_CHECKING:
    from trunkguard.config import Config

EVENTS = ("opened", "updated", "closed")
BACKOFF = 1.0  # first retry after 1 s, then 2 s, 4 s...
SUBJECT = "[trunkguard {{ site }}] {{ incident.severity }} {{ event }}: {{ incident.cause }}"
BODY = """\
Incident {{ incident.id }} {{ event }} at {{ site }}/{{ node }}.

Cause:    {{ incident.cause }}
Severity: {{ incident.severity }}
Opened:   {{ incident.opened }}{% if incident.closed %}
Closed:   {{ incident.closed }} (after {{ incident.duration_s }} s){% endif %}
Impact:{% for group, change in incident.impact.items() %}
  route group {{ group }}: {{ change }}{% else %} no route group moved{% endfor %}

Evidence:{% for line in incident.evidence %}
  {{ line }}{% endfor %}
{% if suppressed %}
({{ suppressed }} earlier notices were held back by the rate limit.)
{% endif %}"""
SAMPLE = {
    "event": "opened",
    "site": "dc1",
    "node": "sbc1",
    "suppressed": 0,
    "incident": {
        "id": "20261128T120000-trunk-carrier-a-0000",
        "state": "open",
        "key": "trunk:carrier-a",
        "kind": "trunk",
        "severity": "major",
        "cause": "trunk:carrier-a down: 3 consecutive failures: timeout",
        "impact": {"outbound": "carrier-a → carrier-b"},
        "opened": "2026-11-28T12:00:00.000Z",
        "updated": "2026-11-28T12:00:00.000Z",
        "closed": None,
        "duration_s": None,
        "evidence": ["2026-11-28T12:00:00.000Z trunk:carrier-a up → down: timeout"],
        "revision": 1,
        "site": "dc1",
        "node": "sbc1",
    },
}


class WebhookConfig(Strict):
    url: str  # secret: never logged
    timeout: Duration = 5.0
    retries: int = Field(3, ge=0, le=10)
    content_type: str = "application/json"
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or any(c in v for c in " \r\n"):
            raise ValueError("url must be http:// or https:// without spaces")
        return v


class EmailConfig(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    smtp: str  # host:port of the relay
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    password_file: str | None = None
    timeout: Duration = 10.0
    retries: int = Field(2, ge=0, le=10)

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"smtp must be HOST:PORT, got {v!r}")
        return v

    @model_validator(mode="after")
    def _login(self) -> EmailConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("set both username and password_file, or neither")
        return self


class NotifierConfig(Strict):
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None
    severity: list[Literal["minor", "major", "critical"]] = ["major", "critical"]
    kinds: list[Literal["trunk", "link", "peer", "call", "site"]] = [
        "trunk",
        "link",
        "peer",
        "call",
        "site",
    ]
    events: list[Literal["opened", "updated", "closed"]] = ["opened", "closed"]
    sites: list[str] | None = None  # only at these sites (one config for many sites)
    subject: str = SUBJECT  # email
    template: str | None = None  # the message; default: JSON (webhook) or a text summary
    max_per_minute: int = Field(10, ge=1, le=1000)
    queue: int = Field(100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _valid(self) -> NotifierConfig:
        if (self.webhook is None) == (self.email is None):
            raise ValueError("set exactly one of webhook or email")
        for name, text in (("subject", self.subject), ("template", self.template)):
            if text is not None:
                try:
                    render_text(compile_text(text, name), name, SAMPLE)
                except ActuatorError as e:
                    raise ValueError(e.message) from None
        return self

    def wants(self, event: str, doc: dict[str, Any], site: str) -> bool:
        return (
            event in self.events
            and doc["severity"] in self.severity
            and doc["kind"] in self.kinds
            and (self.sites is None or site in self.sites)
        )


class Bucket:
    """A token bucket (pure: time passed in): `rate` a minute, bursts of as many."""

    def __init__(self, rate: int, now: float) -> None:
        self.rate, self.tokens, self.at = rate, float(rate), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate / 60.0)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Notify(Feature):
    name = "notify"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        for name, n in cfg.notify.items():
            pw = None if n.email is None else n.email.password_file
            if pw is not None and not Path(pw).is_file():
                loc = ("notify", name, "email", "password_file")
                problems.append(lines.problem(loc, f"{pw}: no such file"))
        return problems

    def build(self, ctx: Context) -> Parts:
        if ctx.incidents is None:
            return Parts()
        notifiers = [Notifier(ctx, name, n) for name, n in ctx.cfg.notify.items()]
        ctx.incidents.notifiers = [n.offer for n in notifiers]
        return Parts(tasks=[(f"notify {n.name}", n.run) for n in notifiers])


class Notifier:
    def __init__(self, ctx: Context, name: str, cfg: NotifierConfig) -> None:
        self.ctx, self.name, self.cfg = ctx, name, cfg
        self.site, self.node = ctx.cfg.site, ctx.cfg.node
        self.queue: asyncio.Queue[tuple[str, dict[str, Any], int]] = asyncio.Queue(cfg.queue)
        self.bucket = Bucket(cfg.max_per_minute, ctx.hub.clock())
        self.suppressed = 0
        self.subject = compile_text(cfg.subject, f"notify.{name}.subject")
        # Webhooks send the JSON document unless given a template; mail is always text.
        text = cfg.template if cfg.template is not None or cfg.email is None else BODY
        self.template: jinja2.Template | None = None
        if text is not None:
            self.template = compile_text(text, f"notify.{name}.template")
        self.said: str | None = None

    def offer(self, event: str, doc: dict[str, Any]) -> None:
        """Queue a notice; never waits (called from the hub, on the routing path)."""
        if not self.cfg.wants(event, doc, self.site):
            return
        count = self.ctx.metrics.notifications_total
        if not self.bucket.take(self.ctx.hub.clock()):
            self.suppressed += 1
            count.labels(self.name, "rate_limited").inc()
            return
        try:
            self.queue.put_nowait((event, doc, self.suppressed))
            self.suppressed = 0
        except asyncio.QueueFull:
            self.suppressed += 1
            count.labels(self.name, "dropped").inc()

    async def run(self) -> None:
        while True:
            event, doc, suppressed = await self.queue.get()
            ctx: dict[str, Any] = {"event": event, "incident": doc, "suppressed": suppressed}
            ctx |= {"site": self.site, "node": self.node}
            ok = await self._deliver(ctx)
            self.ctx.metrics.notifications_total.labels(self.name, "sent" if ok else "failed").inc()

    async def _deliver(self, ctx: dict[str, Any]) -> bool:
        retries = (self.cfg.webhook or self.cfg.email).retries  # type: ignore[union-attr]
        for attempt in range(retries + 1):
            try:
                await asyncio.to_thread(self._send, ctx)
            except (OSError, smtplib.SMTPException, ActuatorError, ValueError) as e:
                why = _why(e)
                if why != self.said:
                    self.said = why
                    self.ctx.log.warning("notice not delivered", notifier=self.name, error=why,
                                         attempt=attempt + 1)  # fmt: skip
                if attempt < retries:
                    await asyncio.sleep(BACKOFF * 2**attempt)
                continue
            if self.said is not None:
                self.said = None
                self.ctx.log.info("notices delivered again", notifier=self.name)
            return True
        return False

    def _send(self, ctx: dict[str, Any]) -> None:
        """In a thread: one delivery attempt (blocking I/O with its timeout)."""
        name = f"notify.{self.name}.template"
        if self.cfg.webhook is not None:
            w = self.cfg.webhook
            if self.template is None:
                body = json.dumps(ctx, ensure_ascii=False).encode()
            else:
                body = render_text(self.template, name, ctx).encode()
            headers = {**w.headers, "Content-Type": w.content_type}
            # The url is checked to be http(s) when the config is loaded.
            req = urllib.request.Request(w.url, data=body, headers=headers, method="POST")  # noqa: S310
            with urllib.request.urlopen(req, timeout=w.timeout) as r:  # noqa: S310
                r.read(4096)
            return
        m = self.cfg.email
        assert m is not None
        msg = EmailMessage()
        msg["Subject"] = " ".join(render_text(self.subject, "subject", ctx).split())[:200]
        msg["From"], msg["To"] = m.sender, ", ".join(m.to)
        assert self.template is not None
        msg.set_content(render_text(self.template, name, ctx))
        host, _, port = m.smtp.rpartition(":")
        with smtplib.SMTP(host, int(port), timeout=m.timeout) as s:
            if m.starttls:
                s.starttls(context=ssl.create_default_context())
            if m.username is not None and m.password_file is not None:
                s.login(m.username, Path(m.password_file).read_text().strip())
            s.send_message(msg)


def _why(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot reach the receiver: {e.reason}"
    if isinstance(e, ActuatorError):
        return e.message
    return f"{type(e).__name__}: {e}"


FEATURE = Notify()
