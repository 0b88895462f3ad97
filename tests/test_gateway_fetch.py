"""Image URLs cannot reach our own network: every resolved address, after every redirect, must be public.

A real HTTP server on the loopback alias 127.0.0.2 plays the public image host (the policy trusts just
that address); everything it redirects to, and every private address asked for directly, is refused.
"""

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from tests.helpers import png_bytes
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.gateway.inputs.fetch import FetchPolicy, fetch_url, is_public

IMAGE = png_bytes(np.full((8, 8, 3), 99, np.uint8))
POLICY = FetchPolicy(max_bytes=4096, timeout=2.0, allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
PRIVATE_TARGETS = [
    "http://127.0.0.1:{port}/image.png",
    "http://localhost:{port}/image.png",
    "http://[::1]:{port}/image.png",
    "http://10.0.0.1/image.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:{port}/image.png",
]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/image.png":
            self._send(200, IMAGE)
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.end_headers()
        elif parts.path == "/hops":
            left = int(query["n"][0])
            self.send_response(302)
            self.send_header("Location", f"/hops?n={left - 1}" if left > 0 else "/image.png")
            self.end_headers()
        elif parts.path == "/big":
            self._send(200, b"\0" * 10_000)
        elif parts.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self._drip(b"x" * 100)
        elif parts.path == "/drip-status":
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif parts.path == "/drip-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._drip(b"X-Padding: " + b"y" * 100 + b"\r\n\r\n")
        else:
            self._send(404, b"no")

    def _drip(self, data):
        """One byte every 0.1 s: each read is quick, the whole takes far longer than the deadline."""
        for byte in data:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def host():
    server = ThreadingHTTPServer(("127.0.0.2", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{server.server_address[1]}", server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_public_image_is_fetched(host):
    base, _ = host
    assert fetch_url(f"{base}/image.png", "seedImage", POLICY) == IMAGE
    assert fetch_url(f"{base}/hops?n=2", "seedImage", POLICY) == IMAGE  # 3 redirects are allowed


@pytest.mark.parametrize("target", PRIVATE_TARGETS)
def test_private_addresses_are_refused_directly_and_after_a_redirect(host, target):
    base, port = host
    url = target.format(port=port)
    for attempt in (url, f"{base}/redirect?to={url}"):
        started = time.monotonic()
        with pytest.raises(InvalidInputError) as info:
            fetch_url(attempt, "seedImage", POLICY)
        assert str(info.value).startswith("seedImage: URL host") and "is not a public address" in str(
            info.value
        )
        assert time.monotonic() - started < 1.0  # refused before any connection is tried


def test_a_name_with_any_private_address_is_refused():
    def resolver(host, port):
        return {"mixed.example": ["93.184.216.34", "127.0.0.1"], "meta.example": ["169.254.169.254"]}[host]

    for name in ("mixed.example", "meta.example"):
        with pytest.raises(InvalidInputError, match="is not a public address"):
            fetch_url(f"http://{name}/x.png", "maskImage", POLICY, resolver=resolver)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/hops?n=3", "URL redirected more than 3 times"),
        ("/big", "URL body is larger than 4096 bytes"),
        ("/slow", "URL took longer than 2 s"),
        ("/missing", "URL answered HTTP 404"),
    ],
)
def test_caps_on_redirects_size_time_and_status(host, path, message):
    base, _ = host
    with pytest.raises(InvalidInputError, match=message):
        fetch_url(base + path, "image", POLICY)


@pytest.mark.parametrize("path", ["/slow", "/drip-status", "/drip-headers", "/redirect?to=/slow"])
def test_one_deadline_covers_status_line_headers_body_and_redirects(host, path):
    """A server that trickles its answer (each byte well within a per-read timeout) is cut off at the
    fetch's deadline (2 s here), not when it finishes sending (10 s and more)."""
    base, _ = host
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="image: URL took longer than 2 s"):
        fetch_url(base + path, "image", POLICY)
    assert time.monotonic() - started < 4.0


def test_a_resolver_that_hangs_is_abandoned_at_the_deadline():
    def resolver(host, port):
        time.sleep(5)
        return ["93.184.216.34"]

    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="URL took longer than 2 s"):
        fetch_url("http://slow-dns.example/x.png", "image", POLICY, resolver=resolver)
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize(
    "url",
    ["http://[::ffff:127.0.0.1:18090/", "http://[::1/x.png", "http://example.com:99999/x.png", "http://a:b/"],
)
def test_malformed_urls_are_refused_naming_the_field(url):
    with pytest.raises(InvalidInputError, match=r"^seedImage: (is not a valid URL|URL)"):
        fetch_url(url, "seedImage", POLICY)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::7f00:1]:{port}/image.png",
        "http://[::127.0.0.1]:{port}/image.png",
        "http://[64:ff9b::7f00:1]:{port}/image.png",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[2002:7f00:1::]:{port}/image.png",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fec0::1]/",
        "http://192.0.0.8/",
        "http://2130706433:{port}/image.png",
    ],
)
def test_embedded_and_special_purpose_addresses_are_refused(host, url):
    base, port = host
    url = url.format(port=port)
    for attempt in (url, f"{base}/redirect?to={url}"):
        with pytest.raises(InvalidInputError, match="is not a public address"):
            fetch_url(attempt, "seedImage", POLICY)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/", "http:///x"])
def test_only_http_and_https_with_a_host(url):
    with pytest.raises(InvalidInputError, match="image: URL"):
        fetch_url(url, "image", POLICY)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1::", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("::", False),
    ],
)
def test_public_means_global_unicast(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_https_goes_through_tls_to_the_checked_address(host):
    # The host speaks plain HTTP: the TLS handshake our pinned connection starts must fail cleanly.
    _, port = host
    with pytest.raises(InvalidInputError, match=r"image: cannot fetch URL: .*(SSL|ssl)"):
        fetch_url(f"https://127.0.0.2:{port}/image.png", "image", POLICY)
