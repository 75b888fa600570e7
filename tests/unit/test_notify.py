"""Notifier config (one-line problems, templates checked against a sample incident when
the config is loaded), filters, and the rate limit's token bucket."""

from __future__ import annotations

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.features.notify import Bucket, NotifierConfig

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
