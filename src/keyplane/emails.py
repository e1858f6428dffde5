"""Email addresses as keyplane accepts them, everywhere one is typed (sign-up, the first Owner,
invitations, spend-alert recipients): one ordinary mailbox that any mail server can deliver to."""

from __future__ import annotations

import re

from keyplane.errors import InvalidRequest

MAX_LENGTH = 254  # RFC 5321's limit on a path
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")  # a dot-atom: no quoting, no comments
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # a host name's label (or punycode)


def normalize_email(value: str, *, param: str = "email") -> str:
    """The address as keyplane stores it: trimmed, lower-case.

    Raises InvalidRequest for anything but one mailbox of ASCII characters at a host name: a list
    (``a@x.com,b@y.com`` would mail both), an IP literal, a trailing dot or a non-ASCII address
    (which a mail server without SMTPUTF8 refuses) would send links where they cannot arrive, or
    to more than one person."""
    email = value.strip().lower()
    local, at, domain = email.rpartition("@")
    labels = domain.split(".")
    if not (
        at
        and len(email) <= MAX_LENGTH
        and len(local) <= 64
        and _LOCAL.fullmatch(local)
        and len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        raise InvalidRequest("Enter a valid email address, like you@example.com.", param=param)
    return email
