"""Fetching an image URL for the prediction service (daemon/prediction/image_urls.py):
with aiohttp's client, within a time limit (the whole fetch: the wait for a slot, DNS,
connecting, every redirect, the body) and a size limit (the body is streamed and
dropped at the limit), following at most MAX_REDIRECTS redirects, each checked again.

Whoever can reach the inference routes could otherwise use the daemon as a proxy into
the owner's machine or network (SSRF): every destination address is checked before we
connect, the URL's literal address here and every address a name resolves to in the
resolver aiohttp connects with (so a name cannot change its answer between the check and
the connection). Loopback, private, link-local and other non-public addresses are
refused unless `image_urls_allow_private` is on. No cookies, no keys, no proxy from the
environment: the request carries only our User-Agent and Accept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from daemon.errors import InvalidRequest, PayloadTooLarge
from daemon.prediction.image_urls import FetchLimits
from daemon.prediction.types import ImagePart
from lms.api.version import __version__

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_FETCHES = 4  # at once, daemon-wide; more wait (within their time limit)
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = ("http", "https")
HEADERS = {"User-Agent": f"lmsd/{__version__}", "Accept": "image/*"}
# A NAT64 gateway turns these into the IPv4 address in their last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = IPv4Address | IPv6Address
AddressPolicy = Callable[[IPAddress, bool], bool]


def address_allowed(address: IPAddress, allow_private: bool) -> bool:
    """Whether a fetch may connect to `address`: a public unicast address, or with
    `allow_private` also loopback, private and link-local ones (never 0.0.0.0 or
    multicast)."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in NAT64:
            address = IPv4Address(int(address) & 0xFFFFFFFF)
    if address.is_unspecified or address.is_multicast:
        return False
    return allow_private or address.is_global


class NotAllowed(InvalidRequest):
    """A destination the address policy refuses (raised inside aiohttp's connector)."""


def _not_allowed(param: str, host: str, address: str) -> NotAllowed:
    where = host if host == address else f"{host} ({address})"
    return NotAllowed(
        f"'{param}': {where} is not a public address (loopback, private, link-local or "
        "reserved); image URLs reach only public hosts unless the image_urls_allow_private "
        "setting is on",
        param=param,
        code="image_url_not_allowed",
    )


class _CheckedResolver(AbstractResolver):
    """The system resolver, refusing a name when any of its addresses is not allowed."""

    def __init__(self, policy: AddressPolicy, allow_private: bool, param: str) -> None:
        self._inner = ThreadedResolver()
        self._policy = policy
        self._allow_private = allow_private
        self._param = param

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            if not self._policy(address, self._allow_private):
                raise _not_allowed(self._param, host, str(address))
        return results

    async def close(self) -> None:
        await self._inner.close()


def _failed(param: str, url: URL, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}': could not fetch the image from {url.host}: {why}",
        param=param,
        code="image_url_failed",
    )


def _too_large(param: str, url: URL, size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"'{param}': the image at {url.host} is {size} bytes; images of at most {limit} "
        "bytes are fetched (the image_urls_max_bytes and max_image_bytes settings)",
        param=param,
        code="image_too_large",
    )


class WebImageFetcher:
    """The service's ImageFetcher. `policy` decides which addresses may be reached
    (tests widen it to reach their own server on loopback with the check still on)."""

    def __init__(
        self, *, policy: AddressPolicy = address_allowed, max_fetches: int = MAX_FETCHES
    ) -> None:
        self._policy = policy
        self._slots = asyncio.Semaphore(max_fetches)

    async def fetch(self, url: str, limits: FetchLimits, *, param: str) -> ImagePart:
        target = URL(url)
        try:
            async with asyncio.timeout(limits.timeout):
                async with self._slots:
                    return await self._fetch(target, limits, param)
        except TimeoutError:
            raise InvalidRequest(
                f"'{param}': fetching the image from {target.host} took longer than "
                f"{limits.timeout:g} s (the image_urls_timeout setting)",
                param=param,
                code="image_url_timeout",
            ) from None

    async def _fetch(self, url: URL, limits: FetchLimits, param: str) -> ImagePart:
        resolver = _CheckedResolver(self._policy, limits.allow_private, param)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # no proxy from the environment: it could reach anywhere
            timeout=aiohttp.ClientTimeout(total=None),  # the caller's asyncio.timeout
            headers=HEADERS,
        ) as session:
            for _ in range(MAX_REDIRECTS + 1):
                self._check(url, limits, param)
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        if response.status not in REDIRECT_STATUSES:
                            return await _image(response, url, limits, param)
                        location = response.headers.get("Location")
                        if not location:
                            raise _failed(param, url, f"HTTP {response.status} without a Location")
                        url = url.join(URL(location))
                except aiohttp.ClientError as exc:
                    raise _failed(param, url, str(exc) or type(exc).__name__) from None
        raise _failed(param, url, f"more than {MAX_REDIRECTS} redirects")

    def _check(self, url: URL, limits: FetchLimits, param: str) -> None:
        """A destination (the first or a redirect's) before we connect: its scheme, and
        its address when it is a literal one (names are checked as they resolve)."""
        if url.scheme not in SCHEMES or not url.host:
            raise _failed(param, url, f"{str(url)[:200]!r} is not an http(s) URL")
        if url.user is not None or url.password is not None:
            raise _failed(param, url, "a redirect to a URL with a user name or password")
        try:
            address = ipaddress.ip_address(url.host.split("%", 1)[0])
        except ValueError:
            return
        if not self._policy(address, limits.allow_private):
            raise _not_allowed(param, url.host, str(address))


async def _image(
    response: aiohttp.ClientResponse, url: URL, limits: FetchLimits, param: str
) -> ImagePart:
    if not 200 <= response.status < 300:
        raise _failed(param, url, f"HTTP {response.status}")
    media_type = response.content_type.lower()  # application/octet-stream when not sent
    if media_type == "application/octet-stream":
        media_type = "image/*"  # the image decoder decides
    elif not media_type.startswith("image/"):
        raise InvalidRequest(
            f"'{param}': {url.host} sent {media_type}, not an image",
            param=param,
            code="invalid_image",
        )
    declared = response.content_length
    if declared is not None and declared > limits.max_bytes:
        raise _too_large(param, url, str(declared), limits.max_bytes)
    body = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > limits.max_bytes:
            raise _too_large(param, url, f"more than {limits.max_bytes}", limits.max_bytes)
    if not body:
        raise InvalidRequest(
            f"'{param}': {url.host} sent no bytes", param=param, code="invalid_image"
        )
    log.info("fetched an image of %d bytes from %s", len(body), url.host)
    return ImagePart(bytes(body), media_type)
