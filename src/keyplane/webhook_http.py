"""Webhook deliveries over HTTP (httpx): the ``Poster`` of ``notify/webhooks.py``.

An organization's Owner chooses the URL, so by default a delivery refuses a destination that
resolves to this machine, a private network, a link-local address (cloud metadata services) or any
other address that is not public: a webhook must not become a way into the operator's network.
``KEYPLANE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` lifts that for endpoints inside it. (Checked at each
delivery, before connecting; redirects are not followed.)"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx


class HttpPoster:
    def __init__(
        self, *, allow_private: bool, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._allow_private = allow_private
        self._transport = transport

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if not self._allow_private:
            await self._check_public(url)
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=10.0, follow_redirects=False
            ) as client:
                response = await client.post(url, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from None
        return response.status_code

    @staticmethod
    async def _check_public(url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not addr.is_global:
                raise OSError(f"refused: {host} resolves to {addr}, not a public address")
