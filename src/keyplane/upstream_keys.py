"""The configured upstreams' provider keys, in clear: a ``sealed:…`` one opened with the encryption
key or a previous one (``keyplane seal`` sealed it). The gateway opens them when it is built,
``serve``/``dev`` before they listen, ``reseal`` to name the ones to seal again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.fernet import InvalidToken

from keyplane import sealing
from keyplane.config import Settings, UpstreamSettings
from keyplane.gateway.upstreams import Upstream


class UnopenedUpstreamKey(ValueError):
    """An upstream's sealed api_key that none of the encryption keys opens. (The message names
    the upstream and the id of the key that sealed it, never the sealed value nor the secret.)"""

    def __init__(self, upstream: str, sealed_with: str | None = None) -> None:
        which = f" (it records key id {sealed_with})" if sealed_with else ""
        super().__init__(
            f"upstream '{upstream}': the encryption key does not open its sealed api_key{which} "
            "(nor does any in KEYPLANE_ENCRYPTION_KEY_PREVIOUS): add the key that sealed it to "
            "KEYPLANE_ENCRYPTION_KEY_PREVIOUS, or run `keyplane seal` again with the current "
            "key and replace it in the configuration"
        )


def open_upstreams(settings: Settings) -> list[Upstream]:
    """The configured upstreams with their provider keys in clear (a ``sealed:…`` one opened
    with the encryption key or a previous one). Raises UnopenedUpstreamKey."""
    keys = _keys_if_sealed(settings)
    result = []
    for u in settings.upstreams:
        name = u.name or u.base_url
        try:
            api_key, _ = _provider_key(u, keys)
        except InvalidToken:
            raise UnopenedUpstreamKey(name, _recorded_key_id(u)) from None
        models = frozenset(m for m in u.models if m != "*")
        result.append(Upstream(name=name, base_url=u.base_url, api_key=api_key, models=models))
    return result


@dataclass(frozen=True, slots=True)
class StaleUpstreamKey:
    """A sealed upstream key in the configuration that the current encryption key does not open:
    ``reseal`` cannot rewrite the configuration, the operator seals it again by hand."""

    upstream: str  # its name, or its base URL
    opens_with: Literal["previous", "none"]  # a previous encryption key only, or none of them


def stale_upstream_keys(settings: Settings) -> list[StaleUpstreamKey]:
    keys = _keys_if_sealed(settings)
    stale = []
    for u in settings.upstreams:
        try:
            _, opened_by = _provider_key(u, keys)
        except InvalidToken:
            stale.append(StaleUpstreamKey(u.name or u.base_url, "none"))
            continue
        if opened_by:  # (0: the current key; None: given in clear)
            stale.append(StaleUpstreamKey(u.name or u.base_url, "previous"))
    return stale


def _provider_key(u: UpstreamSettings, keys: list[bytes]) -> tuple[str | None, int | None]:
    """(An upstream's provider key in clear, which of ``keys`` opened it: None when the
    configuration gives it in clear.) Raises InvalidToken."""
    value = u.api_key.get_secret_value() if u.api_key else None
    if value is None or not sealing.is_sealed(value):
        return value, None
    return sealing.unseal(keys, sealing.UPSTREAMS, value)


def _recorded_key_id(u: UpstreamSettings) -> str | None:
    value = u.api_key.get_secret_value() if u.api_key else ""
    return sealing.recorded_key_id(value.removeprefix(sealing.SEALED).strip())


def sealed_upstream_keys(settings: Settings) -> list[tuple[str, str | None]]:
    """The upstreams whose key the configuration gives sealed: (name, the id of the configured
    encryption key that opens it, or None)."""
    keys = _keys_if_sealed(settings)
    if not keys:
        return []
    opener = sealing.Sealer(keys, sealing.UPSTREAMS)
    found = []
    for u in settings.upstreams:
        value = u.api_key.get_secret_value() if u.api_key else ""
        if sealing.is_sealed(value):
            found.append(
                (u.name or u.base_url, opener.opens(value.removeprefix(sealing.SEALED).strip()))
            )
    return found


def _keys_if_sealed(settings: Settings) -> list[bytes]:
    """The encryption keys, when an upstream key is sealed (in development, the first call writes
    one into the data directory: not for a configuration that seals nothing)."""
    sealed = (u.api_key.get_secret_value() for u in settings.upstreams if u.api_key)
    return settings.encryption_keys() if any(map(sealing.is_sealed, sealed)) else []
