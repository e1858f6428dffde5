"""``POST /v1/secret_scanning/reports``: keys found in public, reported by a secret scanning service
the way GitHub's secret scanning partner program sends them (BRIEF C8).

A report is a JSON array of ``{"token", "type", "url", "source"}``, signed with ECDSA P-256 over
SHA-256 of the raw body: the signature (base64 DER) in ``Github-Public-Key-Signature``, the signing
key's identifier in ``Github-Public-Key-Identifier``. The public keys come from
``KEYPLANE_LEAK_REPORT_KEYS`` (identifier → PEM) and from the list at
``KEYPLANE_LEAK_REPORT_KEYS_URL`` (GitHub's, by default), fetched again when an unknown identifier
arrives, at most once a minute. A report that is not signed by one of them changes nothing.

Each token that is a working key of this keyplane is revoked at once, audited and emailed to the
Owners (``keys/leaks.py``). The answer is GitHub's feedback: per token, the SHA-256 of it and
``true_positive`` (a key of this keyplane, revoked now or before) or ``false_positive``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keyplane.audit.models import Actor, ActorType
from keyplane.gateway.errors import ApiError
from keyplane.keys.leaks import LeakResponder
from keyplane.web.auth import context
from keyplane.web.errors import AdminApiError

log = logging.getLogger("keyplane.leak_reports")

GITHUB_KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
REFETCH_S = 60.0  # an unknown identifier fetches the list again at most this often
PATH = "/v1/secret_scanning/reports"
MAX_TOKENS = 1000  # matches per report
MAX_TEXT = 2000  # characters of a type, URL or source kept
MAX_BODY_BYTES = 8 * 1024 * 1024  # a thousand matches with long URLs
REPORTER = Actor(ActorType.SYSTEM, "secret scanning report")

router = APIRouter(prefix="/v1/secret_scanning", include_in_schema=False)


class LeakServices(Protocol):
    @property
    def leaks(self) -> LeakResponder: ...


class ReporterKeys:
    """The reporters' public keys by identifier: the configured ones, and those listed at ``url``
    (``{"public_keys": [{"key_identifier", "key"}]}``, GitHub's shape)."""

    def __init__(
        self,
        configured: Mapping[str, str],
        url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configured = {kid: _p256(pem, kid) for kid, pem in configured.items()}
        self._fetched: dict[str, ec.EllipticCurvePublicKey] = {}
        self._url = url
        self._transport = transport
        self._now = now
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._configured or self._url)

    async def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        key = self._configured.get(identifier) or self._fetched.get(identifier)
        if key is not None or not self._url:
            return key
        async with self._lock:
            last, now = self._fetched_at, self._now()
            if identifier not in self._fetched and (last is None or now - last >= REFETCH_S):
                self._fetched_at = now
                await self._fetch()
        return self._fetched.get(identifier)

    async def _fetch(self) -> None:
        """Replaces the fetched keys by the list at the URL; keeps them when it cannot be read."""
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=5.0) as client:
                r = await client.get(self._url, headers={"accept": "application/json"})
                r.raise_for_status()
                listed = r.json()["public_keys"]
                keys = {str(k["key_identifier"]): _p256(str(k["key"]), "") for k in listed}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the secret scanning public keys at %s: %s", self._url, exc)
            return
        self._fetched = keys


def _p256(pem: str, name: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError(f"the public key {name!r} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"the public key {name!r} is not an ECDSA P-256 key")
    return key


def _refused(message: str) -> AdminApiError:
    return AdminApiError(ApiError(401, message, code="invalid_signature"))


@router.post(PATH.removeprefix("/v1/secret_scanning"))
async def report(request: Request) -> JSONResponse:
    reporters = cast(ReporterKeys, request.app.state.leak_reporters)
    if not reporters.enabled:
        raise AdminApiError(ApiError(404, "Invalid URL (POST /v1/secret_scanning/reports)"))
    identifier = request.headers.get("github-public-key-identifier", "")
    signature = request.headers.get("github-public-key-signature", "")
    body = await request.body()
    if not identifier or not signature:
        raise _refused(
            "A report must be signed: Github-Public-Key-Identifier and "
            "Github-Public-Key-Signature headers."
        )
    key = await reporters.get(identifier[:200])
    if key is None:
        raise _refused("The report is signed with a key keyplane does not know.")
    try:
        key.verify(base64.b64decode(signature, validate=True), body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise _refused("The report's signature does not match its body.") from None
    matches = _matches(body)
    leaks = cast(LeakServices, context(request).services).leaks
    feedback = await asyncio.to_thread(_respond, leaks, matches)
    return JSONResponse(feedback)


def _matches(body: bytes) -> list[dict[str, str]]:
    """The report's matches: a JSON array of objects with a string ``token``."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(
        isinstance(m, dict) and isinstance(m.get("token"), str) for m in parsed
    ):
        raise AdminApiError(
            ApiError(400, 'A report is a JSON array of objects, each with a string "token".')
        )
    if len(parsed) > MAX_TOKENS:
        raise AdminApiError(ApiError(400, f"A report holds at most {MAX_TOKENS} matches."))
    # The token whole (its feedback hash is of all of it); a lone surrogate (JSON allows
    # "\udc80") as U+FFFD, so that one odd match cannot stop the rest of the report.
    return [
        {
            name: (value if name == "token" else value[:MAX_TEXT])
            .encode("utf-8", "surrogatepass")
            .decode("utf-8", "replace")
            for name, value in m.items()
            if isinstance(value, str)
        }
        for m in parsed
    ]


def _respond(leaks: LeakResponder, matches: list[dict[str, str]]) -> list[dict[str, str]]:
    feedback = []
    for match in matches:
        token = match["token"]
        key = leaks.key_of(token)
        if key is not None:
            where = match.get("url") or match.get("source") or "a public place"
            if leaks.revoke(key, where, REPORTER, "a secret scanning report"):
                log.warning("revoked key %s: reported leaked at %s", key.id, where)
        feedback.append({
            "token_hash": hashlib.sha256(token.encode()).hexdigest(),
            "token_type": match.get("type", ""),
            "label": "false_positive" if key is None else "true_positive",
        })  # fmt: skip
    return feedback
