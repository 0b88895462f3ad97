"""Fetching user-supplied image URLs without letting them reach our own network (SSRF).

Every hop's host is resolved here, *every* address it resolves to must be public, and the connection
is then made to that checked address (the Host header and TLS name stay the URL's), so a DNS answer
cannot change between the check and the connect. Redirects are followed by hand, each target checked
the same way. Written by hand because neither urllib nor httpx can pin the connect address to the
checked one; http.client does the HTTP.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from triton_inpaint.errors import InvalidInputError

MAX_REDIRECTS = 3
Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public(address: IPAddress) -> bool:
    """Globally routable and unicast: not loopback, private, link-local (cloud metadata included),
    unique-local, shared (CGNAT), multicast, reserved or unspecified; IPv4-mapped IPv6 by its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 15.0  # seconds for the whole fetch, redirects included
    # Networks an operator trusts besides public addresses (e.g. an internal image store). Empty by
    # default; the tests use it to serve images from a loopback alias.
    allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=tuple)

    def allows(self, address: IPAddress) -> bool:
        return is_public(address) or any(address in network for network in self.allowed_networks)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _checked_address(url: str, field_name: str, policy: FetchPolicy, resolver: Resolver) -> tuple:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(field_name, f"URL scheme {parts.scheme!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise InvalidInputError(field_name, "URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInputError(field_name, "URL has an invalid port") from None
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError):
        raise InvalidInputError(field_name, f"cannot resolve host {host!r}") from None
    if not addresses:
        raise InvalidInputError(field_name, f"cannot resolve host {host!r}")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if not policy.allows(address):
            raise InvalidInputError(
                field_name, f"URL host {host!r} resolves to {address}, which is not a public address"
            )
    return parts, host, port, addresses[0]


def fetch_url(
    url: str, field_name: str, policy: FetchPolicy | None = None, resolver: Resolver = resolve
) -> bytes:
    """The body of a public http(s) URL, at most ``policy.max_bytes``; every refusal names the field."""
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts, host, port, address = _checked_address(url, field_name, policy, resolver)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InvalidInputError(field_name, f"URL took longer than {policy.timeout:g} s")
        connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        connection = connection_class(host, port, address, timeout=remaining)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            connection.request(
                "GET", target, headers={"User-Agent": "triton-inpaint-gateway", "Accept": "image/*"}
            )
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise InvalidInputError(
                        field_name, f"URL redirected ({response.status}) without a Location"
                    )
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise InvalidInputError(field_name, f"URL answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                raise InvalidInputError(field_name, f"URL body is larger than {policy.max_bytes} bytes")
            body = bytearray()
            while len(body) <= policy.max_bytes:
                if time.monotonic() > deadline:
                    raise InvalidInputError(field_name, f"URL took longer than {policy.timeout:g} s")
                chunk = response.read(64 * 1024)
                if not chunk:
                    return bytes(body)
                body += chunk
            raise InvalidInputError(field_name, f"URL body is larger than {policy.max_bytes} bytes")
        except TimeoutError:
            raise InvalidInputError(field_name, f"URL took longer than {policy.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidInputError(field_name, f"cannot fetch URL: {exc}") from None
        finally:
            connection.close()
    raise InvalidInputError(field_name, f"URL redirected more than {MAX_REDIRECTS} times")
