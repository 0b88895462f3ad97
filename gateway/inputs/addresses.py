"""Which IP addresses a user-supplied URL may reach: globally routable unicast ones, and nothing else.

A property, not a list of bad hosts: an address is refused unless the standard library calls it global
*and* it lies in no range of IANA's special-purpose registries that is not globally reachable *and*
every IPv4 address embedded in it (IPv4-mapped, -compatible and -translated IPv6, NAT64, 6to4, Teredo)
is itself public. The stdlib alone is not enough: Python 3.11 calls ``192.0.0.8``, ``::7f00:1`` (an
IPv4-compatible loopback) and ``64:ff9b::a9fe:a9fe`` (NAT64 of the cloud metadata address) global.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 and IPv6 Special-Purpose Address Registries: every block whose "Globally Reachable" is
# False or N/A (https://www.iana.org/assignments/iana-ipv4-special-registry and -ipv6-special-registry),
# plus multicast and the deprecated blocks that still route somewhere private. The blocks that embed an
# IPv4 address (NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by that address instead.
NOT_GLOBAL_NETWORKS = tuple(
    ipaddress.ip_network(block)
    for block in (
        # IPv4
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata at 169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.9 and .10 are global: refused all the same)
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 limited broadcast
        # IPv6
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses (checked below)
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b:1::/48",  # NAT64 local-use
        "100::/64",  # discard-only
        "100:0:0:1::/64",  # dummy prefix
        "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address that ``address`` carries by one of the IPv4/IPv6 transition mechanisms."""
    found: list[ipaddress.IPv4Address] = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _COMPATIBLE or address in _TRANSLATED or address in _NAT64_WELL_KNOWN:
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client)
    return found


def is_public(address: IPAddress) -> bool:
    """Whether a URL may make the gateway connect to ``address``: globally routable unicast only."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False  # a zone index only means something on a local link
        embedded = embedded_ipv4(address)
        if any(not is_public(inner) for inner in embedded):
            return False
        if address in _NAT64_WELL_KNOWN or address.sixtofour is not None:
            return True  # judged by the (public) IPv4 address it carries
    if any(address in network for network in NOT_GLOBAL_NETWORKS if network.version == address.version):
        return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_link_local
        and not address.is_unspecified
        and not address.is_loopback
    )
