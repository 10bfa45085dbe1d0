"""Fetching an image from a URL on a caller's behalf, without becoming a proxy into our own network.

Off unless ``input.allow_url`` is set. Only http(s); every hop's host must resolve to public addresses
only (no private, loopback, link-local, multicast, reserved or unspecified ones), checked again after
each redirect; the body is streamed with a byte limit and the whole fetch has a time limit.

Known limit: the address is checked at resolution time and the HTTP client resolves again when it
connects, so a DNS answer that changes in between (rebinding) is not caught here. Put the service
behind an egress proxy or firewall for that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpx

from models.image_input import ImageInputError

AddressPolicy = Callable[[str, "ipaddress.IPv4Address | ipaddress.IPv6Address"], str | None]


def public_only(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Default policy: the reason ``address`` is refused, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for flag in ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(address, flag):
            return f"{host} resolves to {address}, a {flag[3:].replace('_', '-')} address"
    return None


async def _check_host(url: str, policy: AddressPolicy) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageInputError("url_scheme_refused", f"only http and https URLs are fetched, not {parts.scheme!r}")
    if not parts.hostname:
        raise ImageInputError("url_invalid", f"URL {url!r} has no host")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ImageInputError("url_unresolvable", f"cannot resolve {parts.hostname}: {err}") from err
    for info in infos:
        reason = policy(parts.hostname, ipaddress.ip_address(info[4][0]))
        if reason:
            raise ImageInputError("url_address_refused", f"refused to fetch {url}: {reason}", status=403)


async def fetch_url(
    url: str,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 3,
    policy: AddressPolicy = public_only,
) -> bytes:
    """The body at ``url``, within the limits; :class:`ImageInputError` names what went wrong."""
    try:
        return await asyncio.wait_for(_fetch(url, max_bytes, timeout_s, max_redirects, policy), timeout_s)
    except asyncio.TimeoutError:
        raise ImageInputError("url_timeout", f"fetching {url} took longer than {timeout_s} s", status=504) from None


async def _fetch(url: str, max_bytes: int, timeout_s: float, max_redirects: int, policy: AddressPolicy) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client:
        for _ in range(max_redirects + 1):
            await _check_host(url, policy)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise ImageInputError(
                            "url_fetch_failed", f"{url} answered HTTP {response.status_code}", status=502
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise ImageInputError(
                                "too_large", f"{url} sends more than the {max_bytes}-byte limit", status=413
                            )
                    return bytes(body)
            except httpx.HTTPError as err:
                raise ImageInputError("url_fetch_failed", f"cannot fetch {url}: {err}", status=502) from err
        raise ImageInputError("url_too_many_redirects", f"more than {max_redirects} redirects from the URL given")
