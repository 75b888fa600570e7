"""Notifier config (one-line problems, templates checked against a sample incident when
the config is loaded), filters, and the rate limit's token bucket."""

from __future__ import annotations

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.core.engine import Engine
from trunkguard.features.base import Context
from trunkguard.features.notify import Bucket, Notifier, NotifierConfig
from trunkguard.hub import Hub
from trunkguard.obs.logging import get_logger
from trunkguard.obs.metrics import Metrics

BASE = """\
site: dc1
node: sbc1
notify:
  chat:
"""


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ("    severity: [major]\n", "set exactly one of webhook or email"),
        ('    webhook: {url: "ftp://x"}\n', "url must be http:// or https://"),
        (
            '    webhook: {url: "http://x"}\n    template: "{{ incident.nope }}"\n',
            "notify.chat: template:1: 'dict object' has no attribute 'nope'",
        ),
        ('    webhook: {url: "http://x"}\n    template: "{% if %}"\n', "template:1: Expected an"),
        (
            "    email: {smtp: mail, from: a@b, to: [c@d]}\n",
            "smtp must be HOST:PORT, got 'mail'",
        ),
        (
            "    email: {smtp: 'mail:25', from: a@b, to: [c@d], username: u}\n",
            "set both username and password_file, or neither",
        ),
        (
            "    email: {smtp: 'mail:25', from: a@b, to: [c@d], username: u, "
            "password_file: /nonexistent/pw}\n",
            "notify.chat.email.password_file: /nonexistent/pw: no such file",
        ),
        ('    webhook: {url: "http://x"}\n    severity: [urgent]\n', "notify.chat.severity[0]"),
    ],
)
def test_notifier_config_problems(body: str, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + body)
    assert any(want in p for p in e.value.problems), e.value.problems
    assert all("\n" not in p for p in e.value.problems)


def test_filters_by_event_severity_kind_and_site() -> None:
    n = NotifierConfig.model_validate(
        {"webhook": {"url": "http://x"}, "kinds": ["trunk"], "sites": ["dc1"]}
    )
    doc = {"severity": "major", "kind": "trunk"}
    assert n.wants("opened", doc, "dc1")
    assert not n.wants("updated", doc, "dc1")  # opened and closed by default
    assert not n.wants("opened", {**doc, "severity": "minor"}, "dc1")
    assert not n.wants("opened", {**doc, "kind": "site"}, "dc1")
    assert not n.wants("opened", doc, "dc2")


def test_the_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    b = Bucket(3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(10.0)  # 10 s: half a token at 3 a minute
    assert b.take(20.0)  # a whole one
    assert not b.take(20.0)


def test_a_storm_is_held_back_and_counted_in_the_next_notice() -> None:
    """Twelve incidents in a second against 10 a minute: ten queued, two held back
    (counted), and the next notice after the bucket refills says so."""
    cfg = parse_config(BASE + '    webhook: {url: "http://x"}\n    max_per_minute: 10\n')
    now = [0.0]
    hub = Hub(Engine(cfg.core_spec()), lambda: now[0])
    m = Metrics()
    ctx = Context(cfg, hub, m, get_logger("test"), None, {})
    n = Notifier(ctx, "chat", cfg.notify["chat"])
    doc = {"severity": "major", "kind": "trunk"}
    for _ in range(12):
        n.offer("opened", doc)
    assert n.queue.qsize() == 10
    assert m.notifications_total.labels("chat", "rate_limited")._value.get() == 2
    now[0] = 6.0  # one token back
    n.offer("closed", doc)
    queued = [n.queue.get_nowait() for _ in range(11)]
    assert queued[-1] == ("closed", doc, 2)  # the two held back, said in the next one
    assert all(q[2] == 0 for q in queued[:10])
