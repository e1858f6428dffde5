"""The secret scanning signers' public keys: read from their list when an unknown one signs, at
most once a minute, and kept when the list cannot be read."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keyplane.web.leak_reports import ReporterKeys

URL = "https://keys.example/meta/public_keys/secret_scanning"


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Listing:
    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.reads = 0
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.reads += 1
        if self.down:
            return httpx.Response(503)
        listed = [{"key_identifier": k, "key": v, "is_current": True} for k, v in self.keys.items()]
        return httpx.Response(200, json={"public_keys": listed})


def test_unknown_signers_read_the_list_once_a_minute_and_a_failed_read_keeps_the_keys() -> None:
    listing, clock = Listing(), [1000.0]
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    listing.keys["k1"] = pem(first)
    keys = ReporterKeys(
        {}, URL, transport=httpx.MockTransport(listing.handle), now=lambda: clock[0]
    )

    async def steps() -> None:
        assert (await keys.get("k1")) is not None and listing.reads == 1
        assert (await keys.get("k1")) is not None and listing.reads == 1  # known: no read
        listing.keys["k2"] = pem(second)  # the signer rotates in a new key
        clock[0] += 30
        assert (await keys.get("k2")) is None and listing.reads == 1  # read 30 s ago
        clock[0] += 31
        assert (await keys.get("k2")) is not None and listing.reads == 2
        listing.down = True
        clock[0] += 61
        assert (await keys.get("k3")) is None and listing.reads == 3
        assert (await keys.get("k1")) is not None  # kept through the failed read

    asyncio.run(steps())


def test_configured_keys_need_no_list_and_must_be_p256() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = ReporterKeys({"mine": pem(key)}, "")
    assert keys.enabled
    assert asyncio.run(keys.get("mine")) is not None
    assert asyncio.run(keys.get("other")) is None
    assert not ReporterKeys({}, "").enabled
    with pytest.raises(ValueError, match="not an ECDSA P-256 key"):
        ReporterKeys({"p384": pem(ec.generate_private_key(ec.SECP384R1()))}, "")
