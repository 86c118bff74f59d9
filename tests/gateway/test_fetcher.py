"""Images by URL: fetched from public addresses only, every redirect checked, bounded, fetched once.

A real HTTP server on loopback serves images and redirects to forbidden places. Loopback is itself
forbidden, so the tests that fetch admit exactly 127.0.0.1/32 through the allow-list, as an
operator would admit an internal image store, and nothing else.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from ferry.types.v1 import types_pb2
from services.common.addresses import embedded_ipv4, forbidden
from services.common.errors import InvalidArgument
from services.common.fetcher import Fetcher, FetchPolicy, inline_each, inline_images

IMAGE = b"\xff\xd8\xff\xe0" + b"jpeg" * 1000
LIMIT = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        port = self.server.server_address[1]
        redirects = {
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-private": "http://10.1.2.3/cat.jpg",
            "/to-ipv6-loopback": f"http://[::1]:{port}/cat.jpg",
            "/to-mapped-loopback": f"http://[::ffff:127.0.0.2]:{port}/cat.jpg",
            "/to-other-loopback": f"http://127.0.0.2:{port}/cat.jpg",
            "/to-file": "file:///etc/passwd",
            "/loop": "/loop",
            "/relative": "/cat.jpg",
        }
        if self.path in redirects:
            self.send_response(302)
            self.send_header("location", redirects[self.path])
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/cat.jpg":
            self._send(IMAGE)
        elif self.path == "/declared-too-large":
            self.send_response(200)
            self.send_header("content-length", str(LIMIT + 1))
            self.end_headers()
        elif self.path == "/endless":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 8192
            try:
                for _ in range(100):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
        elif self.path == "/slow":
            time.sleep(2)
            self._send(IMAGE)
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "image/jpeg")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetcher(allowed: tuple[str, ...] = ("127.0.0.1/32",), timeout_s: float = 5.0) -> Fetcher:
    policy = FetchPolicy(
        LIMIT, timeout_s, max_redirects=3, allowed_networks=FetchPolicy.parse_networks(allowed)
    )
    return Fetcher(policy)


async def refused(uri: str, reason: str, allowed: tuple[str, ...] = ("127.0.0.1/32",)) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        await fetcher(allowed).fetch(uri)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.metadata["field"] == "image.uri"
    return caught.value


async def test_fetches_an_admitted_address(server: str) -> None:
    assert await fetcher().fetch(f"{server}/cat.jpg") == IMAGE


async def test_follows_a_redirect_to_an_admitted_address(server: str) -> None:
    assert await fetcher().fetch(f"{server}/relative") == IMAGE


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:{port}/cat.jpg",  # loopback
        "http://localhost:{port}/cat.jpg",  # a name that resolves to loopback
        "http://[::1]:{port}/cat.jpg",  # IPv6 loopback
        "http://[::ffff:127.0.0.1]:{port}/cat.jpg",  # loopback as an IPv4-mapped IPv6 address
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS's IPv6 metadata (unique local)
        "http://10.0.0.1/x.jpg",
        "http://192.168.1.1/x.jpg",
        "http://172.16.0.1/x.jpg",
        "http://100.64.0.1/x.jpg",  # carrier-grade NAT
        "http://0.0.0.0:{port}/cat.jpg",
        "http://2130706433:{port}/cat.jpg",  # 127.0.0.1 as one decimal number
    ],
)
async def test_private_and_reserved_addresses_are_refused_without_an_allow_list(
    server: str, uri: str
) -> None:
    port = server.rsplit(":", 1)[1]
    error = await refused(uri.format(port=port), "IMAGE_URI_FORBIDDEN", allowed=())
    assert "does not fetch images from" in error.message


@pytest.mark.parametrize(
    "path",
    [
        "/to-metadata",
        "/to-private",
        "/to-ipv6-loopback",
        "/to-mapped-loopback",
        "/to-other-loopback",
    ],
)
async def test_every_redirect_is_checked_again(server: str, path: str) -> None:
    # The first hop is admitted (127.0.0.1/32); where it redirects is not.
    await refused(f"{server}{path}", "IMAGE_URI_FORBIDDEN")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.jpg",
        "gopher://x/",
        "http://user:pw@example.com/x.jpg",
        "cat.jpg",
    ],
)
async def test_only_http_urls_without_credentials(uri: str) -> None:
    await refused(uri, "INVALID_IMAGE_URI")


async def test_a_redirect_to_another_scheme_is_refused(server: str) -> None:
    await refused(f"{server}/to-file", "INVALID_IMAGE_URI")


async def test_redirects_are_bounded(server: str) -> None:
    error = await refused(f"{server}/loop", "IMAGE_FETCH_FAILED")
    assert "redirects" in error.message


async def test_a_declared_size_over_the_limit_is_refused_before_reading(server: str) -> None:
    error = await refused(f"{server}/declared-too-large", "IMAGE_TOO_LARGE")
    assert str(LIMIT) in error.message


async def test_a_body_is_read_to_the_limit_and_no_further(server: str) -> None:
    await refused(f"{server}/endless", "IMAGE_TOO_LARGE")


async def test_the_fetch_has_a_deadline(server: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await fetcher(timeout_s=0.3).fetch(f"{server}/slow")
    assert caught.value.reason == "IMAGE_FETCH_FAILED" and "0.3 s" in caught.value.message


async def test_not_found_is_a_fetch_failure(server: str) -> None:
    error = await refused(f"{server}/missing.jpg", "IMAGE_FETCH_FAILED")
    assert "HTTP 404" in error.message


async def test_images_are_inlined_once_and_sent_on_as_bytes(server: str) -> None:
    Handler.hits.pop("/cat.jpg", None)
    inputs = [types_pb2.Image(uri=f"{server}/cat.jpg"), types_pb2.Image(content=b"bytes already")]
    await inline_images(((image, f"inputs[{i}].image") for i, image in enumerate(inputs)), fetcher())
    assert inputs[0].content == IMAGE and inputs[0].uri == ""
    assert inputs[1].content == b"bytes already"
    assert Handler.hits["/cat.jpg"] == 1


async def test_content_and_uri_together_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        await inline_images(
            [(types_pb2.Image(content=b"x", uri="https://example.com/x.jpg"), "image")], fetcher()
        )
    assert caught.value.reason == "INVALID_IMAGE_URI"


def test_forbidden_ranges() -> None:

    def check(text: str, *allowed: str) -> bool:
        return forbidden(ipaddress.ip_address(text), FetchPolicy.parse_networks(allowed))

    assert not check("93.184.215.14") and not check("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert check("127.0.0.1") and check("::1") and check("169.254.169.254") and check("fe80::1")
    assert check("::ffff:10.0.0.1") and check("224.0.0.1") and check("240.0.0.1")
    assert not check("10.0.0.7", "10.0.0.0/24") and check("10.0.1.7", "10.0.0.0/24")


async def test_batch_inputs_fail_one_by_one(server: str) -> None:
    inputs = [
        types_pb2.Input(image=types_pb2.Image(uri=f"{server}/cat.jpg")),
        types_pb2.Input(image=types_pb2.Image(uri="http://169.254.169.254/latest/meta-data/")),
        types_pb2.Input(image=types_pb2.Image(content=b"bytes")),
    ]
    failed = await inline_each(inputs, fetcher())
    assert list(failed) == [1] and failed[1].reason == "IMAGE_URI_FORBIDDEN"
    assert failed[1].metadata["field"] == "inputs[1].image.uri"
    assert inputs[0].image.content == IMAGE and inputs[2].image.content == b"bytes"


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64 of the metadata service
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("64:ff9b:1:a9fe:a9:fe00::", "169.254.169.254"),  # local-use NAT64, /48 layout (RFC 6052)
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),  # local-use NAT64, /96 layout
        ("2002:7f00:1::", "127.0.0.1"),  # 6to4 of loopback
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
        ("::a00:7", "10.0.0.7"),
        ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
        ("::ffff:0:a9fe:a9fe", "169.254.169.254"),  # IPv4-translated
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo, client 127.0.0.1 (obfuscated)
        ("2001:0:a00:7:8000:63bf:3fff:fdd2", "10.0.0.7"),  # Teredo, server 10.0.0.7
    ],
)
def test_an_ipv6_address_carrying_a_private_ipv4_is_forbidden(address: str, carried: str) -> None:
    v6 = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address(carried) in embedded_ipv4(v6)
    assert forbidden(v6, ())


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2001:0:808:808:8000:63bf:f7f7:f7f7"],
)
def test_an_ipv6_address_carrying_a_public_ipv4_is_judged_by_it(address: str) -> None:
    assert not forbidden(ipaddress.IPv6Address(address), ())


def test_an_embedded_ipv4_is_admitted_by_the_allow_list_as_an_ipv4() -> None:
    allowed = FetchPolicy.parse_networks(["10.0.0.0/24"])
    assert not forbidden(ipaddress.IPv6Address("64:ff9b::a00:7"), allowed)
    assert forbidden(ipaddress.IPv6Address("64:ff9b::a00:107"), allowed)


@pytest.mark.parametrize(
    "uri",
    [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[2002:a9fe:a9fe::]/x.jpg",
        "http://[::10.0.0.7]/x.jpg",
        "http://[::ffff:a00:7]/x.jpg",
        # A zoned link-local literal is forbidden before it is resolved (this machine has no such zone).
        "http://[fe80::1%lo]/x.jpg",
        "http://[fe80::1%25nozone]/x.jpg",
    ],
)
async def test_urls_to_forbidden_address_literals_are_refused(uri: str) -> None:
    # (The fetcher here admits 127.0.0.1, so these carry other private addresses.)
    with pytest.raises(InvalidArgument) as caught:
        await fetcher().fetch(uri)
    assert caught.value.reason == "IMAGE_URI_FORBIDDEN"


@pytest.mark.parametrize(
    "uri",
    [
        "http://a..b.com/x.jpg",
        "http://" + "a" * 64 + ".com/x.jpg",
        "http://\u2100.com/x.jpg",  # ℀: NFKC makes it 'a/c'
        "http://[::1/x.jpg",
        "http://exa mple.com/x.jpg",
        "http://-a.com/x.jpg",
        "http://a.b\udcff.com/x.jpg",
        "http://" + "a." * 130 + "com/x.jpg",
        "http://ex%41mple.com/",
    ],
)
async def test_malformed_hosts_are_invalid_uris(uri: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await fetcher().fetch(uri)
    assert caught.value.reason == "INVALID_IMAGE_URI"
