"""CSRF protection for every state-changing request of the dashboard.

The scheme is OWASP's "signed double-submit cookie": each form carries
``HMAC-SHA-256(key, binding)`` in a hidden ``csrf_token`` field, where the binding is the session
cookie's value when there is one, else a random anonymous cookie (so the sign-up, log-in and
password-reset forms are covered too; "login CSRF" would sign a victim into the attacker's
account). Another site can make a browser send the cookies but can neither read them nor compute
the HMAC, whose key never leaves the server. Both cookies are HttpOnly and SameSite=Lax, and on
HTTPS they carry the ``__Host-`` prefix, which stops a sibling subdomain from planting one.

As a second line, a request whose ``Origin`` header names another host is refused outright.
A refused request answers 403 and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

FIELD = "csrf_token"
ANON_COOKIE = "kp_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfRejected(Exception):
    """The request carried no valid CSRF token (or came from another origin)."""


def cookie_name(base: str, secure: bool) -> str:
    """``__Host-`` cookies must be Secure, host-only and for Path=/; keyplane's are."""
    return f"__Host-{base}" if secure else base


def new_anonymous_binding() -> str:
    return secrets.token_urlsafe(32)


def token_for(key: bytes, binding: str) -> str:
    digest = hmac.new(key, b"keyplane/csrf/v1:" + binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_valid(key: bytes, binding: str | None, token: str) -> bool:
    if not binding or not token:
        return False
    return hmac.compare_digest(token_for(key, binding), token)


def same_origin(request: Request, public_host: str = "") -> bool:
    """False only when the browser says the request comes from another host than this one, as
    the request names it (``Host``) or as people open it (``public_host``, the public URL's: a
    reverse proxy may pass its own address on as ``Host``)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    host = urlsplit(origin).netloc.lower()
    return host in (request.headers.get("host", "").lower(), public_host.lower())
