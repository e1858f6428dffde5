"""Webhook deliveries over HTTP (httpx): the ``Poster`` of ``notify/webhooks.py``.

An organization's Owner chooses the URL, so by default a delivery refuses a destination that
resolves to this machine, a private network, a link-local address (cloud metadata services) or any
other address that is not public: a webhook must not become a way into the operator's network.
The name is resolved once, and the delivery connects to the address that was checked (the name
still in the Host header and in TLS: SNI and the certificate check), so a DNS answer that changes
between the check and the connection (rebinding) cannot send it elsewhere. Redirects are not
followed. ``KEYPLANE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` lifts all that for endpoints inside it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from keyplane.notify.webhooks import is_public, public_host

Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class HttpPoster:
    def __init__(
        self,
        *,
        allow_private: bool,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolve = resolve,
    ) -> None:
        self._allow_private = allow_private
        self._transport = transport
        self._resolve = resolver

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        sent_headers = dict(headers)
        extensions: dict[str, Any] = {}
        if not self._allow_private:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addr = await self._public_address(host, port)
            at = f"[{addr}]" if addr.version == 6 else str(addr)
            url = urlunsplit(parts._replace(netloc=f"{at}:{port}" if parts.port else at))
            sent_headers["host"] = parts.netloc
            extensions["sni_hostname"] = host
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=10.0, follow_redirects=False
            ) as client:
                request = client.build_request(
                    "POST", url, content=body, headers=sent_headers, extensions=extensions
                )
                response = await client.send(request)
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from None
        return response.status_code

    async def _public_address(
        self, host: str, port: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The first address ``host`` resolves to, if it is no local name (the check a URL
        passed when it was added, again: an endpoint may predate it) and every address it
        resolves to is public."""
        try:
            public = public_host(host)
        except ValueError:
            public = False
        if not public:
            raise OSError(f"refused: {host} is not a public address")
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self._resolve(host, port)]
        if not addresses:
            raise OSError(f"refused: {host} resolves to no address")
        for addr in addresses:
            if not is_public(addr):
                raise OSError(f"refused: {host} resolves to {addr}, not a public address")
        return addresses[0]
