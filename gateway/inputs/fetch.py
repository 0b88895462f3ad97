"""Fetching user-supplied image URLs without letting them reach our own network (SSRF).

Every hop's host is resolved here, *every* address it resolves to must be public (see
:mod:`.addresses`), and the connection is then made to that checked address (the Host header and TLS
name stay the URL's), so a DNS answer cannot change between the check and the connect. Redirects are
followed by hand, each target checked the same way. One deadline covers the whole fetch (resolution,
connect, TLS, status line, headers, body, every redirect): a watchdog shuts the socket down when it
passes, so a server that drips a byte a second cannot hold a worker past it. Written by hand because
neither urllib nor httpx can pin the connect address to the checked one; http.client does the HTTP.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.gateway.inputs.addresses import IPAddress, is_public

MAX_REDIRECTS = 3
Resolver = Callable[[str, int], list[str]]
# Name lookups run here, so that a resolver that hangs is abandoned at the fetch's deadline.
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="resolve")


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


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
    """Connects to the checked address; ``raw_socket`` stays reachable for the deadline's watchdog
    even after http.client hands the socket over to the response (and forgets it)."""

    def __init__(self, host: str, port: int, address: str, deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self._address = address
        self._deadline = deadline
        self.raw_socket: socket.socket | None = None

    def _open(self) -> socket.socket:
        self.raw_socket = socket.create_connection((self._address, self.port), self.timeout)
        if time.monotonic() >= self._deadline:  # the watchdog may have fired before it saw the socket
            raise TimeoutError
        return self.raw_socket

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, deadline: float) -> None:
        http.client.HTTPSConnection.__init__(
            self,
            host,
            port,
            timeout=max(deadline - time.monotonic(), 0.001),
            context=ssl.create_default_context(),
        )
        self._address = address
        self._deadline = deadline
        self.raw_socket = None

    def connect(self) -> None:
        # Shutting the plain socket down also ends a TLS handshake that trickles.
        self.sock = self._context.wrap_socket(self._open(), server_hostname=self.host)


def _lookup(resolver: Resolver, host: str, port: int, timeout: float) -> list[str]:
    future = _LOOKUPS.submit(resolver, host, port)
    try:
        return future.result(timeout=max(timeout, 0.0))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError from None


def _checked_address(
    url: str, field_name: str, policy: FetchPolicy, resolver: Resolver, deadline: float
) -> tuple[urllib.parse.SplitResult, str, int, str]:
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range or not a number
        raise InvalidInputError(field_name, f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(field_name, f"URL scheme {parts.scheme!r} is not allowed; use http or https")
    if not host:
        raise InvalidInputError(field_name, "URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = _lookup(resolver, host, port, deadline - time.monotonic())
    except TimeoutError:  # an OSError too: the caller turns it into "took longer than"
        raise
    except (OSError, UnicodeError, ValueError):
        raise InvalidInputError(field_name, f"cannot resolve host {host!r}") from None
    if not addresses:
        raise InvalidInputError(field_name, f"cannot resolve host {host!r}")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidInputError(field_name, f"URL host {host!r} resolves to {text!r}") from None
        if not policy.allows(address):
            raise InvalidInputError(
                field_name, f"URL host {host!r} resolves to {address}, which is not a public address"
            )
    return parts, host, port, addresses[0]


class _Deadline:
    """Shuts a connection's socket down when the fetch's time is up, whatever call is blocked on it
    (connect, TLS handshake, a status line or body that trickles in): socket timeouts are per call, so
    alone they let a slow server hold the fetch for as long as it keeps sending."""

    def __init__(self, connection: _PinnedHTTPConnection | _PinnedHTTPSConnection, seconds: float) -> None:
        self._connection = connection
        self.expired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        sock = self._connection.raw_socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def fetch_url(
    url: str, field_name: str, policy: FetchPolicy | None = None, resolver: Resolver = resolve
) -> bytes:
    """The body of a public http(s) URL, at most ``policy.max_bytes``, within ``policy.timeout`` seconds
    for everything (redirects included); every refusal names the field."""
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.timeout
    too_slow = InvalidInputError(field_name, f"URL took longer than {policy.timeout:g} s")
    for _ in range(MAX_REDIRECTS + 1):
        try:
            parts, host, port, address = _checked_address(url, field_name, policy, resolver, deadline)
        except TimeoutError:
            raise too_slow from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise too_slow
        connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        connection = connection_class(host, port, address, deadline)
        watchdog = _Deadline(connection, remaining)
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
                chunk = response.read(64 * 1024)
                if watchdog.expired:
                    raise too_slow
                if not chunk:
                    return bytes(body)
                body += chunk
            raise InvalidInputError(field_name, f"URL body is larger than {policy.max_bytes} bytes")
        except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
            if watchdog.expired or isinstance(exc, TimeoutError):
                raise too_slow from None
            raise InvalidInputError(field_name, f"cannot fetch URL: {exc}") from None
        finally:
            watchdog.cancel()
            connection.close()
    raise InvalidInputError(field_name, f"URL redirected more than {MAX_REDIRECTS} times")
