"""Identifiers: random base62 strings with an OpenAI-style prefix (``org-…``, ``proj_…``)."""

from __future__ import annotations

import secrets
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + random_base62(length)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)
