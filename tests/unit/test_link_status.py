"""link_status: the pure verdict on one interface's facts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trunkguard.watch.links import DOWN_CONDITIONS, LinkFacts, LinkSpec, link_status

UP = LinkFacts(
    present=True,
    admin_up=True,
    carrier=True,
    operstate="up",
    addresses=frozenset({"192.0.2.2", "2001:db8::2", "fe80::1"}),
    neighbour="reachable",
)
V4 = LinkSpec("uplink-a", "eth1", gateway="192.0.2.1")
V6 = LinkSpec("uplink-6", "eth1", gateway="2001:db8::1")
ANY = LinkSpec("plain", "eth1")
PINNED = LinkSpec("pinned", "eth1", gateway="192.0.2.1", address="192.0.2.2")


def test_all_well_is_up() -> None:
    for spec in (V4, V6, ANY, PINNED):
        assert link_status(spec, UP) == (True, "up")


def test_each_condition_and_its_reason() -> None:
    cases = [
        (LinkFacts(), "interface eth1 missing"),
        (replace(UP, admin_up=False, carrier=False), "eth1 administratively down"),
        (
            replace(UP, carrier=False, operstate="lowerlayerdown"),
            "eth1 no carrier (operstate lowerlayerdown)",
        ),
        (replace(UP, addresses=frozenset({"198.51.100.7"})), "address 192.0.2.2 removed from eth1"),
        (replace(UP, neighbour="failed"), "gateway 192.0.2.1 unreachable (neighbour failed)"),
    ]
    for facts, reason in cases:
        assert link_status(PINNED, facts) == (False, reason)


def test_reasons_come_in_order() -> None:
    # Everything wrong at once: each fix reveals the next reason in the documented order.
    facts = LinkFacts(present=True, operstate="down", neighbour="failed")
    steps = [
        ("eth1 administratively down", {"admin_up": True}),
        ("eth1 no carrier (operstate down)", {"carrier": True}),
        ("eth1 no carrier (operstate down)", {"operstate": "up"}),
        ("address 192.0.2.2 removed from eth1", {"addresses": frozenset({"192.0.2.2"})}),
        ("gateway 192.0.2.1 unreachable (neighbour failed)", {"neighbour": "stale"}),
    ]
    for reason, fix in steps:
        assert link_status(PINNED, facts) == (False, reason)
        facts = replace(facts, **fix)
    assert link_status(PINNED, facts) == (True, "up")


@pytest.mark.parametrize("operstate", ["down", "lowerlayerdown", "notpresent"])
def test_operstate_without_carrier_even_if_lower_up(operstate: str) -> None:
    assert link_status(V4, replace(UP, operstate=operstate)) == (
        False,
        f"eth1 no carrier (operstate {operstate})",
    )


@pytest.mark.parametrize("operstate", ["up", "unknown", "dormant"])
def test_lower_up_clear_is_no_carrier_whatever_operstate(operstate: str) -> None:
    facts = replace(UP, carrier=False, operstate=operstate)
    assert link_status(V4, facts) == (False, f"eth1 no carrier (operstate {operstate})")


def test_loopback_operstate_unknown_with_lower_up_is_up() -> None:
    lo = LinkSpec("loop", "lo", address="127.0.0.1")
    facts = LinkFacts(
        present=True,
        admin_up=True,
        carrier=True,
        operstate="unknown",
        addresses=frozenset({"127.0.0.1", "::1"}),
    )
    assert link_status(lo, facts) == (True, "up")


def test_address_family_follows_the_gateway() -> None:
    only_v4 = replace(UP, addresses=frozenset({"192.0.2.2", "fe80::1"}))
    only_v6 = replace(UP, addresses=frozenset({"2001:db8::2", "fe80::1"}))
    assert link_status(V4, only_v4) == (True, "up")
    assert link_status(V6, only_v4) == (False, "no IPv6 address on eth1")
    assert link_status(V6, only_v6) == (True, "up")
    assert link_status(V4, only_v6) == (False, "no IPv4 address on eth1")
    # Without a gateway any family will do.
    assert link_status(ANY, only_v4) == (True, "up")
    assert link_status(ANY, only_v6) == (True, "up")
    assert link_status(ANY, replace(UP, addresses=frozenset())) == (False, "no address on eth1")


def test_link_local_and_loopback_addresses_do_not_count() -> None:
    facts = replace(UP, addresses=frozenset({"fe80::1", "169.254.3.4", "127.0.0.1", "::1"}))
    assert link_status(ANY, facts) == (False, "no address on eth1")
    assert link_status(V6, facts) == (False, "no IPv6 address on eth1")
    assert link_status(V4, facts) == (False, "no IPv4 address on eth1")
    # ...but a named address is just looked up, whatever its scope.
    spec = LinkSpec("ll", "eth1", address="fe80::1")
    assert link_status(spec, facts) == (True, "up")


def test_named_address_is_compared_as_an_address_not_as_text() -> None:
    spec = LinkSpec("v6", "eth1", address="2001:DB8:0::2")
    assert link_status(spec, UP) == (True, "up")
    assert link_status(spec, replace(UP, addresses=frozenset({"2001:db8::3"}))) == (
        False,
        "address 2001:DB8:0::2 removed from eth1",
    )


@pytest.mark.parametrize(
    "state", [None, "incomplete", "reachable", "stale", "delay", "probe", "none", "permanent"]
)
def test_only_a_failed_neighbour_is_down(state: str | None) -> None:
    assert link_status(V4, replace(UP, neighbour=state)) == (True, "up")


def test_neighbour_ignored_without_a_gateway() -> None:
    assert link_status(ANY, replace(UP, neighbour="failed")) == (True, "up")


def test_down_when_subsets() -> None:
    broken = LinkFacts(present=True, operstate="down", neighbour="failed")
    spec = replace(PINNED, down_when=frozenset({"neighbour"}))
    assert link_status(spec, broken) == (False, "gateway 192.0.2.1 unreachable (neighbour failed)")
    spec = replace(PINNED, down_when=frozenset({"carrier", "address"}))
    assert link_status(spec, broken) == (False, "eth1 no carrier (operstate down)")
    spec = replace(PINNED, down_when=frozenset({"address"}))
    assert link_status(spec, broken) == (False, "address 192.0.2.2 removed from eth1")
    # A missing interface is down whatever down_when says.
    spec = replace(PINNED, down_when=frozenset())
    assert link_status(spec, LinkFacts()) == (False, "interface eth1 missing")
    assert link_status(spec, broken) == (True, "up")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown down_when"):
        LinkSpec("x", "eth1", down_when=frozenset({"carier"}))
    with pytest.raises(ValueError, match="not an IP address"):
        LinkSpec("x", "eth1", gateway="192.0.2.1/24")
    with pytest.raises(ValueError, match="not an IP address"):
        LinkSpec("x", "eth1", address="gw.example")
    with pytest.raises(ValueError, match="bad interface name"):
        LinkSpec("x", "a-very-long-interface-name")
    assert set(LinkSpec("x", "eth1").down_when) == set(DOWN_CONDITIONS)


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
facts_st = st.builds(
    LinkFacts,
    present=st.booleans(),
    admin_up=st.booleans(),
    carrier=st.booleans(),
    operstate=st.sampled_from(
        ["up", "down", "lowerlayerdown", "notpresent", "unknown", "dormant", "testing"]
    ),
    addresses=st.frozensets(ips, max_size=4),
    neighbour=st.sampled_from([None, "incomplete", "reachable", "stale", "failed", "none"]),
)
specs_st = st.builds(
    LinkSpec,
    name=st.just("l"),
    interface=st.just("eth1"),
    gateway=st.one_of(st.none(), ips),
    address=st.one_of(st.none(), ips),
    down_when=st.frozensets(st.sampled_from(DOWN_CONDITIONS)),
)


@given(specs_st, facts_st)
def test_no_conditions_means_up_iff_present(spec: LinkSpec, facts: LinkFacts) -> None:
    up, reason = link_status(replace(spec, down_when=frozenset()), facts)
    assert up == facts.present
    assert reason == ("up" if facts.present else "interface eth1 missing")


@given(specs_st, facts_st)
def test_reason_is_up_exactly_when_up(spec: LinkSpec, facts: LinkFacts) -> None:
    up, reason = link_status(spec, facts)
    assert (reason == "up") == up
    assert "\n" not in reason
