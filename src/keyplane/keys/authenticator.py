"""Authentication on the hot path: a key cache invalidated by the store's change feed.

A request costs no database round trip once its key is cached. Revocation reaches the cache through
``refresh()``, which the gateway runs every ``key_poll_interval_s`` (default 0.25 s), so a key revoked
by any process (the CLI, another gateway) is refused within that interval plus one database read.

A key whose hash was made with a previous pepper (a rotation under way, keys/format.py) is checked
with that pepper, and hashed again with the current one: the new hash is written with the batched
"last used" times, so the key moves to the current pepper when it is first used (and costs the
extra HMAC once per process, not per request).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import math
import os

from keyplane import reads
from keyplane.clock import Clock
from keyplane.errors import InvalidApiKey, TooManyFailures
from keyplane.keys import format as keyfmt
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore

# Key ids the store does not have are remembered apart, up to this many (then forgotten at once):
# a flood of made-up ids costs database reads but never evicts a real key.
MAX_UNKNOWN = 100_000

# Failed authentications per client address (BRIEF C8: per source IP, not per key). Past
# MAX_FAILURES in a FAILURE_WINDOW_S window, a token from that address that this process has not
# verified already is refused at once (429), without a database read or an HMAC, until the window
# ends. Keys that worked before keep working from it (an address may be shared: a NAT, an office),
# and so do revoked and expired keys' usual 401s (a forgotten old key is not an attack).
MAX_FAILURES = 50
FAILURE_WINDOW_S = 60.0
MAX_ADDRESSES = 100_000  # addresses remembered (then forgotten at once)


def _invalid(token: str) -> InvalidApiKey:
    # Never echo the secret: OpenAI shows a redacted form, so do we (and only when it parses).
    shown = keyfmt.redact(token) if keyfmt.parse(token) else "(not a keyplane key)"
    return InvalidApiKey(
        f"Incorrect API key provided: {shown}. You can find your API key in the keyplane dashboard."
    )


def _bucket(client_ip: str | None) -> str | None:
    """Whose failures an address counts with: itself, or for IPv6 its /64 (one host has a whole
    /64 to send from)."""
    if client_ip is None or ":" not in client_ip:
        return client_ip
    try:
        return str(ipaddress.ip_network(f"{client_ip}/64", strict=False))
    except ValueError:
        return client_ip


class KeyAuthenticator:
    def __init__(
        self,
        store: KeyStore,
        pepper: bytes | keyfmt.Peppers,
        clock: Clock,
        *,
        max_entries: int = 1_000_000,
    ) -> None:
        self._store = store
        self._peppers = keyfmt.Peppers(pepper) if isinstance(pepper, bytes) else pepper
        self._clock = clock
        self._max_entries = max_entries
        # Key id → key, in the order they were read. When full, the oldest eighth is dropped (one
        # database read each when next used) rather than the whole cache at once.
        self._cache: dict[str, ApiKey] = {}
        self._unknown: set[str] = set()  # ids the store does not have (until a change arrives)
        self._seq: int | None = None
        self._epoch = 0  # bumped whenever refresh() invalidates something
        self._reads: reads.SharedReads[tuple[str, int], ApiKey | None] = reads.SharedReads()
        self._uses: dict[str, tuple[int, str | None]] = {}
        # Keys verified with a previous pepper: id → (the stored hash, the current pepper's).
        self._rehashes: dict[str, tuple[str, str]] = {}
        # Keyed BLAKE2b of whole tokens (prefix, key id, secret and checksum) that passed every
        # check, under a key made at start and never stored: kid → digest and digest → kid. A later
        # request with the same token costs one digest (~7k instructions) and two lookups instead
        # of the format check (regular expression, CRC32 to base62) and HMAC-SHA-256 through
        # OpenSSL (~24k, a fetch of the algorithm per call); any other token, a changed checksum
        # included, has another digest and takes the full path. Dropped with the key's entry.
        self._verified: dict[str, bytes] = {}
        self._by_digest: dict[bytes, str] = {}
        self._digest_key = os.urandom(32)
        # Client address → (start of its window, failures in it).
        self._failures: dict[str | None, tuple[float, int]] = {}

    async def authenticate(self, token: str, client_ip: str | None) -> ApiKey:
        """Returns the usable key for ``token``.

        Raises InvalidApiKey (unknown, wrong secret, revoked, expired) or StoreUnavailable when the
        key is not cached and the database cannot be reached (callers answer 503, never 401)."""
        digest = hashlib.blake2b(
            token.encode("utf-8", "surrogateescape"), key=self._digest_key, digest_size=32
        ).digest()
        seen = self._by_digest.get(digest)
        key = None if seen is None else self._cache.get(seen)
        if seen is None or key is None:  # new, or its key was dropped from the cache since
            self._check_failures(client_ip)
            try:
                _, key = await self._verify(token, digest)
            except InvalidApiKey:
                self._failed(client_ip)
                raise
        now = self._clock.now()
        if key.revoked_at is not None:
            raise InvalidApiKey(f"The API key {key.redacted_value} has been revoked.")
        if not key.is_usable(now):
            raise InvalidApiKey(f"The API key {key.redacted_value} has expired.")
        return key

    async def _verify(self, token: str, digest: bytes) -> tuple[str, ApiKey]:
        """The format check, the key (cached or read), the secret's HMAC; remembers ``digest``."""
        parsed = keyfmt.parse(token)
        if parsed is None:
            raise _invalid(token)
        kid = keyfmt.key_id(parsed.public_id)
        key = self._cache.get(kid)
        if key is None and kid not in self._unknown:
            epoch = self._epoch
            key = await self._reads.read((kid, epoch), self._store.get, kid)
            # A refresh() that ran while we were reading may have invalidated this very key; caching
            # what we read could then resurrect a revoked key, so only cache when none ran.
            if epoch == self._epoch:
                self._remember(kid, key)
        if (
            key is None
            or key.kind != parsed.kind
            or not self._peppers.matches(parsed.secret, key.secret_hash, key.pepper_id)
        ):
            raise _invalid(token)
        if key.pepper_id != self._peppers.current_id:
            self._rehashes[key.id] = (key.secret_hash, self._peppers.hash(parsed.secret)[0])
        if self._cache.get(kid) is key:  # (not when a refresh ran meanwhile: checked again later)
            self._forget_digest(kid)
            self._verified[key.id] = digest
            self._by_digest[digest] = key.id
        return key.id, key

    def _check_failures(self, client_ip: str | None) -> None:
        seen = self._failures.get(_bucket(client_ip))
        if seen is None or seen[1] < MAX_FAILURES:
            return
        left = seen[0] + FAILURE_WINDOW_S - self._clock.now()
        if left <= 0:
            del self._failures[_bucket(client_ip)]
            return
        raise TooManyFailures(
            f"Too many requests with invalid API keys from {client_ip or 'your address'}: try "
            f"again in {max(1, math.ceil(left))} s.",
            retry_after_s=left,
        )

    def _failed(self, client_ip: str | None) -> None:
        now = self._clock.now()
        client_ip = _bucket(client_ip)
        seen = self._failures.get(client_ip)
        if seen is None or now - seen[0] >= FAILURE_WINDOW_S:
            if len(self._failures) >= MAX_ADDRESSES:
                self._failures.clear()
            self._failures[client_ip] = (now, 1)
        else:
            self._failures[client_ip] = (seen[0], seen[1] + 1)

    def _forget_digest(self, kid: str) -> None:
        digest = self._verified.pop(kid, None)
        if digest is not None:
            self._by_digest.pop(digest, None)

    def _remember(self, kid: str, key: ApiKey | None) -> None:
        if key is None:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown.add(kid)
            return
        if len(self._cache) >= self._max_entries:
            for old in list(itertools.islice(self._cache, max(1, self._max_entries // 8))):
                del self._cache[old]
                self._forget_digest(old)
        self._forget_digest(kid)
        # Under the key's own id string (equal to ``kid``, which was read by it): a second copy of
        # every id would be ~60 B more per cached key.
        self._cache[key.id] = key

    def _drop(self, kid: str) -> None:
        self._cache.pop(kid, None)
        self._unknown.discard(kid)
        self._forget_digest(kid)

    async def refresh(self) -> int:
        """Reads the change feed once and drops changed keys from the cache; returns how many.

        The read runs in a thread; the cache is only touched on the event loop, so the epoch check
        in authenticate() sees a consistent picture. Raises StoreUnavailable."""
        if self._seq is None:
            # First successful read of the feed: anything cached before it (while the database
            # was unreachable at startup) may predate a change we will never see; drop it all.
            self._seq, _ = await asyncio.to_thread(self._store.changes_since, None)
            dropped = len(self._cache) + len(self._unknown)
            self._cache.clear()
            self._unknown.clear()
            self._verified.clear()
            self._by_digest.clear()
            self._epoch += 1
            return dropped
        seq, changed = await asyncio.to_thread(self._store.changes_since, self._seq)
        self._seq = seq
        for kid in changed:
            self._drop(kid)
        if changed:
            self._epoch += 1
        return len(changed)

    def forget(self, key_id: str) -> None:
        """Drops one key at once (used by the process that made the change)."""
        self._drop(key_id)
        self._epoch += 1

    def used(self, key: ApiKey, client_ip: str | None, now: float) -> None:
        """Records that ``key`` was used (its last_used_at and last_used_ip, written in batches).
        Only for a request the key was allowed to make: authenticating it is not enough (a request
        its IP allowlist, permissions or models refuse leaves "Last used" as it was)."""
        self._uses[key.id] = (int(now), client_ip)

    def take_uses(self) -> dict[str, tuple[int, str | None]]:
        """Returns and clears the last-use times seen since the previous call (coalesced writes)."""
        uses, self._uses = self._uses, {}
        return uses

    def store_uses(self, uses: dict[str, tuple[int, str | None]]) -> None:
        """Writes last-use times (blocking; run in a thread). Raises StoreUnavailable."""
        self._store.record_use(uses)

    def take_rehashes(self) -> dict[str, tuple[str, str]]:
        """Returns and clears the keys verified with a previous pepper since the previous call:
        id → (their stored hash, their hash with the current pepper)."""
        rehashes, self._rehashes = self._rehashes, {}
        return rehashes

    def keep_rehashes(self, rehashes: dict[str, tuple[str, str]]) -> None:
        """Puts back rehashes that could not be written (tried again at the next flush: the key
        is not checked again while its token is remembered)."""
        for kid, change in rehashes.items():
            self._rehashes.setdefault(kid, change)

    def store_rehashes(self, rehashes: dict[str, tuple[str, str]]) -> None:
        """Writes keys' hashes with the current pepper (blocking; run in a thread). Raises
        StoreUnavailable."""
        self._store.rehash(rehashes, self._peppers.current_id)

    @property
    def cached(self) -> int:
        return len(self._cache)
