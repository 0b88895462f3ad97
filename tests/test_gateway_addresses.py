"""The address check as a property: generated addresses in every block of IANA's special-purpose
registries that is not globally reachable are refused, in every IPv6 form that carries an IPv4 address
too; public addresses are allowed.

The registries are transcribed here from IANA (iana-ipv4-special-registry, iana-ipv6-special-registry)
on their own, not imported from the code under test, so a block missing from the code fails.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_inpaint.gateway.inputs.addresses import embedded_ipv4, is_public

# (block, globally reachable); None = "N/A" in the registry.
IANA_IPV4 = [
    ("0.0.0.0/8", False),
    ("0.0.0.0/32", False),
    ("10.0.0.0/8", False),
    ("100.64.0.0/10", False),
    ("127.0.0.0/8", False),
    ("169.254.0.0/16", False),
    ("172.16.0.0/12", False),
    ("192.0.0.0/24", False),
    ("192.0.0.0/29", False),
    ("192.0.0.8/32", False),
    ("192.0.0.9/32", True),
    ("192.0.0.10/32", True),
    ("192.0.0.170/32", False),
    ("192.0.0.171/32", False),
    ("192.0.2.0/24", False),
    ("192.31.196.0/24", True),
    ("192.52.193.0/24", True),
    ("192.88.99.0/24", None),
    ("192.168.0.0/16", False),
    ("192.175.48.0/24", True),
    ("198.18.0.0/15", False),
    ("198.51.100.0/24", False),
    ("203.0.113.0/24", False),
    ("240.0.0.0/4", False),
    ("255.255.255.255/32", False),
]
IANA_IPV6 = [
    ("::1/128", False),
    ("::/128", False),
    ("::ffff:0:0/96", False),
    ("64:ff9b::/96", True),  # NAT64 well-known prefix: judged by the IPv4 address it carries
    ("64:ff9b:1::/48", False),
    ("100::/64", False),
    ("100:0:0:1::/64", False),
    ("2001::/23", False),
    ("2001::/32", None),  # Teredo
    ("2001:1::1/128", True),
    ("2001:1::2/128", True),
    ("2001:1::3/128", True),
    ("2001:2::/48", False),
    ("2001:3::/32", True),
    ("2001:4:112::/48", True),
    ("2001:10::/28", False),
    ("2001:20::/28", True),
    ("2001:30::/28", True),
    ("2001:db8::/32", False),
    ("2002::/16", None),  # 6to4: judged by the IPv4 address it carries
    ("2620:4f:8000::/48", True),
    ("3fff::/20", False),
    ("5f00::/16", False),
    ("fc00::/7", False),
    ("fe80::/10", False),
]
# Not in the special-purpose registries, but no URL may reach them either.
OTHER_REFUSED = ["224.0.0.0/4", "ff00::/8", "fec0::/10", "::/96"]
NOT_REACHABLE = [block for block, reachable in IANA_IPV4 + IANA_IPV6 if reachable is False] + OTHER_REFUSED
PUBLIC_IPV4 = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "151.101.1.69"]


def addresses_in(block: str) -> st.SearchStrategy:
    network = ipaddress.ip_network(block)
    first, last = int(network.network_address), int(network.broadcast_address)
    return st.integers(first, last).map(
        lambda value: ipaddress.ip_address(value) if network.version == 4 else ipaddress.IPv6Address(value)
    )


refused_ipv4 = st.sampled_from([b for b in NOT_REACHABLE if ipaddress.ip_network(b).version == 4]).flatmap(
    addresses_in
)


def ipv6_forms(v4: ipaddress.IPv4Address, suffix: int) -> list[ipaddress.IPv6Address]:
    """Every way IPv6 carries an IPv4 address: mapped, compatible, translated, NAT64 (well-known and
    local-use), 6to4 (any interface id) and Teredo (as server, and obfuscated as client)."""
    value = int(v4)
    return [
        ipaddress.IPv6Address(f"::ffff:{v4}"),
        ipaddress.IPv6Address(value),
        ipaddress.IPv6Address((0xFFFF << 32) | value),
        ipaddress.IPv6Address((0x64FF9B << 96) | value),
        ipaddress.IPv6Address((0x0064FF9B0001 << 80) | (value << 8)),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | (suffix & ((1 << 80) - 1))),
        ipaddress.IPv6Address((0x20010000 << 96) | (value << 64) | (suffix & 0xFFFF_FFFF_0000_0000)),
        ipaddress.IPv6Address(
            (0x20010000 << 96) | (int(ipaddress.IPv4Address("8.8.8.8")) << 64) | (value ^ 0xFFFFFFFF)
        ),
    ]


@pytest.mark.parametrize("block", NOT_REACHABLE)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_address_of_a_non_global_block_is_refused(block, data):
    address = data.draw(addresses_in(block))
    assert not is_public(address), f"{address} (in {block}) was allowed"


@settings(max_examples=300, deadline=None)
@given(v4=refused_ipv4, suffix=st.integers(0, 2**80 - 1))
def test_a_refused_ipv4_address_is_refused_in_every_ipv6_form(v4, suffix):
    for form in ipv6_forms(v4, suffix):
        assert not is_public(form), f"{form} carries {v4} and was allowed"


@pytest.mark.parametrize("text", PUBLIC_IPV4)
def test_public_ipv4_is_allowed_and_through_nat64_and_6to4(text):
    v4 = ipaddress.IPv4Address(text)
    assert is_public(v4)
    nat64, sixtofour = ipv6_forms(v4, 1)[3], ipv6_forms(v4, 1)[5]
    assert is_public(nat64) and is_public(sixtofour)
    assert v4 in embedded_ipv4(nat64) and v4 in embedded_ipv4(sixtofour)


def _globally_routed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not any(
        address in ipaddress.ip_network(block)
        for block, _ in IANA_IPV4 + IANA_IPV6 + [(b, None) for b in OTHER_REFUSED]
        if ipaddress.ip_network(block).version == address.version
    )


@settings(max_examples=500, deadline=None)
@given(value=st.integers(0, 2**32 - 1))
def test_ordinary_unicast_ipv4_is_allowed(value):
    address = ipaddress.IPv4Address(value)
    if _globally_routed(address):
        assert is_public(address), f"{address} is ordinary unicast and was refused"


@pytest.mark.parametrize(
    "text",
    [
        "::7f00:1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "fec0::1",
        "192.0.0.8",
        "::ffff:169.254.169.254",
        "fe80::1%eth0",
    ],
)
def test_the_forms_reported_in_the_issue_are_refused(text):
    assert not is_public(ipaddress.ip_address(text))
