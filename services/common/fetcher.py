"""Images named by URL (``image: {uri: "https://..."}``), fetched once by the gateway, safely.

A URL is a request to make the gateway open a connection, so it must not reach what only the
gateway can reach (server-side request forgery): cloud metadata at 169.254.169.254, Postgres,
NATS, the other services, anything on a private network. So:

- only ``http`` and ``https``, no credentials in the URL;
- the host name must be well formed (``addresses.ascii_host``: a malformed one is 400, not 500);
- the host is resolved here, and every address it resolves to must be public (``is_global``; an
  IPv6 address that carries an IPv4 one, NAT64, 6to4, Teredo, mapped or compatible, is judged by
  the IPv4 one: ``addresses.forbidden``) unless a network in the settings' allow-list admits it;
  the connection goes to that checked address (no second lookup that a DNS rebinding could
  answer differently), with TLS verified against the host name;
- every redirect is checked the same way, at most ``max_redirects`` of them;
- the whole fetch has one deadline, and the body is read to at most the image limit
  (a larger Content-Length is refused before reading).

The image is fetched once, at the gateway: what goes on (to inference, into a job's items) is
its bytes, so retries and redeliveries never fetch again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import h11

from ferry.types.v1 import types_pb2
from services.common.addresses import Network, ascii_host, forbidden
from services.common.errors import InvalidArgument
from services.common.settings import ImageFetchSettings

_REDIRECTS = {301, 302, 303, 307, 308}
#: Images of one request (a job's inputs) fetched at the same time.
MAX_CONCURRENT_FETCHES = 8
_CHUNK = 64 * 1024
_USER_AGENT = "ferry (image fetch)"
#: What a request target keeps as is: RFC 3986's reserved characters and '%' (already encoded).
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True)
class FetchPolicy:
    """What the gateway fetches: sizes, time, redirects, and networks admitted despite being private."""

    max_bytes: int
    timeout_s: float = 10.0
    max_redirects: int = 3
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def parse_networks(cls, cidrs: Iterable[str]) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


class Fetcher:
    """Fetches image URLs under a FetchPolicy."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    async def fetch(self, uri: str, where: str = "image.uri") -> bytes:
        """Returns the bytes at ``uri``, following checked redirects.

        Raises:
            InvalidArgument: INVALID_IMAGE_URI (not an http(s) URL), IMAGE_URI_FORBIDDEN (it, or a
                redirect, leads to an address the gateway does not fetch from), IMAGE_TOO_LARGE,
                or IMAGE_FETCH_FAILED (unreachable, not 200, too many redirects, too slow).
        """
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._follow(uri, where)
        except TimeoutError:
            raise _failed(where, uri, f"no answer within {self.policy.timeout_s:g} s") from None

    async def _follow(self, uri: str, where: str) -> bytes:
        current = uri
        for _ in range(self.policy.max_redirects + 1):
            status, location, body = await self._get(current, where)
            if status in _REDIRECTS and location:
                current = urljoin(current, location)
                continue
            if status != 200:
                raise _failed(where, uri, f"the server answered HTTP {status}")
            return body
        raise _failed(where, uri, f"more than {self.policy.max_redirects} redirects")

    async def _get(self, uri: str, where: str) -> tuple[int, str, bytes]:
        url = parse_url(uri, where)
        address = await self._checked_address(url.host, url.port, uri, where)
        return await self._request(url.scheme, url.host, address, url.port, url.target, uri, where)

    async def _checked_address(self, host: str, port: int, uri: str, where: str) -> str:
        """Resolves ``host``; every address must be allowed. Returns the one to connect to.

        An address literal is judged before it is resolved: ``[fe80::1%lo]`` is a forbidden
        link-local address whether or not this machine has that zone.
        """
        try:
            literal = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None and forbidden(literal, self.policy.allowed_networks):
            raise _forbidden_host(where, host)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            raise _failed(where, uri, f"its host does not resolve ({err})") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        refused = [a for a in addresses if forbidden(a, self.policy.allowed_networks)]
        if refused or not addresses:
            raise _forbidden_host(where, host)
        return str(addresses[0])

    async def _request(
        self, scheme: str, host: str, address: str, port: int, target: str, uri: str, where: str
    ) -> tuple[int, str, bytes]:
        context = ssl.create_default_context() if scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host if context else None
            )
        except (OSError, ssl.SSLError) as err:
            raise _failed(where, uri, f"cannot connect ({err})") from None
        try:
            return await self._exchange(reader, writer, host, port, target, uri, where)
        except (OSError, h11.ProtocolError) as err:
            raise _failed(where, uri, f"the connection failed ({err})") from None
        finally:
            writer.close()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        target: str,
        uri: str,
        where: str,
    ) -> tuple[int, str, bytes]:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        authority = host if port in (80, 443) else f"{host}:{port}"
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("host", authority), ("user-agent", _USER_AGENT), ("accept", "image/*")],
        )
        writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
        await writer.drain()
        status, location, body = 0, "", bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(_CHUNK))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                location = headers.get("location", "")
                if status != 200:
                    return status, location, b""
                declared = headers.get("content-length", "")
                if declared.isascii() and declared.isdigit() and int(declared) > self.policy.max_bytes:
                    raise _too_large(where, int(declared), self.policy.max_bytes)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.policy.max_bytes:
                    raise _too_large(where, len(body), self.policy.max_bytes)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, location, bytes(body)


@dataclass(frozen=True)
class Url:
    """An image URL, checked for form: what to connect to and what to ask for."""

    scheme: str
    host: str
    """The ASCII host name (IDNA-encoded) or address literal."""
    port: int
    target: str
    """The request target: path and query."""


def parse_url(uri: str, where: str = "image.uri") -> Url:
    """Checks ``uri``'s form (nothing is resolved or fetched).

    Raises:
        InvalidArgument: INVALID_IMAGE_URI: not an http(s) URL, credentials in it, a bad port or a
            malformed host (``a..b.com``, a label over 63 characters, characters no host has).
    """
    try:
        parts = urlsplit(uri)
    except ValueError as err:  # "Invalid IPv6 URL", characters NFKC maps to '/' or '@'...
        raise _invalid(where, f"is not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(where, f"is {_shown(uri)}; give an http:// or https:// URL of an image")
    if parts.username or parts.password:
        raise _invalid(where, "carries credentials; the gateway fetches public images only")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _invalid(where, f"has an invalid port: {_shown(uri)}") from None
    host = ascii_host(parts.hostname)
    if host is None:
        raise _invalid(
            where,
            f"has a malformed host {_shown(parts.hostname)} (empty labels, a label over 63 "
            "characters, or characters a host name cannot have)",
        )
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    # HTTP/1.1 targets are ASCII without spaces: percent-encode anything else (é, a space, \n).
    return Url(parts.scheme, host, port, quote(target, safe=_TARGET_SAFE, errors="replace"))


def _shown(uri: str) -> str:
    return repr(uri if len(uri) <= 200 else uri[:200] + "...")


def _invalid(where: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where} {why}", reason="INVALID_IMAGE_URI", metadata={"field": where})


def _forbidden_host(where: str, host: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} leads to {host}, which resolves to an address Ferry does not fetch images "
        "from (loopback, private, link-local, cloud metadata or another reserved range); "
        "give a URL on the public internet, or send the image's bytes in content",
        reason="IMAGE_URI_FORBIDDEN",
        metadata={"field": where, "host": host},
    )


def _failed(where: str, uri: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} could not be fetched: {why}; check the URL {_shown(uri)}, "
        "or send the image's bytes in content",
        reason="IMAGE_FETCH_FAILED",
        metadata={"field": where},
    )


def _too_large(where: str, size: int, limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"{where} is more than {limit} bytes (at least {size}); the limit is {limit} bytes",
        reason="IMAGE_TOO_LARGE",
        metadata={"field": where, "max_bytes": str(limit)},
    )


async def inline_images(images: Iterable[tuple[types_pb2.Image, str]], fetcher: Fetcher) -> None:
    """Replaces each image's ``uri`` by the bytes it names, in place (concurrently), so what goes
    on carries bytes only: fetched once. ``images`` pairs each image with its field name.

    Raises:
        InvalidArgument: an image has both content and uri, or its URL cannot be fetched safely.
    """
    pending = []
    for image, where in images:
        if not image.uri:
            continue
        if image.content:
            raise InvalidArgument(
                f"{where} has both content and uri; send one of them",
                reason="INVALID_IMAGE_URI",
                metadata={"field": where},
            )
        pending.append((image, where))
    slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

    async def fetch(image: types_pb2.Image, where: str) -> bytes:
        async with slots:
            return await fetcher.fetch(image.uri, f"{where}.uri")

    fetched = await asyncio.gather(*(fetch(image, where) for image, where in pending))
    for (image, _), content in zip(pending, fetched, strict=True):
        image.content = content
        image.uri = ""


def input_images(
    inputs: Sequence[types_pb2.Input], field: str = "inputs"
) -> list[tuple[types_pb2.Image, str]]:
    """The image inputs of a request with their field names (``inputs[3].image``), for inline_images."""
    return [
        (item.image, f"{field}[{i}].image")
        for i, item in enumerate(inputs)
        if item.WhichOneof("kind") == "image"
    ]


def fetcher_for(settings: ImageFetchSettings, max_bytes: int) -> Fetcher:
    """A fetcher with the settings' deadline, redirects and allow-list, of images up to ``max_bytes``."""
    policy = FetchPolicy(
        max_bytes=max_bytes,
        timeout_s=settings.image_fetch_timeout_s,
        max_redirects=settings.image_fetch_max_redirects,
        allowed_networks=FetchPolicy.parse_networks(settings.image_fetch_allow_networks),
    )
    return Fetcher(policy)


async def inline_each(inputs: Sequence[types_pb2.Input], fetcher: Fetcher) -> dict[int, InvalidArgument]:
    """Like inline_images for a call whose inputs fail one by one (BatchPredict): returns the error
    of each input whose image could not be fetched, by index; the others are inlined."""
    failed: dict[int, InvalidArgument] = {}

    async def one(index: int, image: types_pb2.Image, where: str) -> None:
        try:
            await inline_images([(image, where)], fetcher)
        except InvalidArgument as err:
            failed[index] = err

    images = input_images(inputs)
    indexes = [i for i, item in enumerate(inputs) if item.WhichOneof("kind") == "image"]
    await asyncio.gather(*(one(i, image, where) for i, (image, where) in zip(indexes, images, strict=True)))
    return failed
