"""Key authentication with a cache kept fresh by the store's change feed (in-memory fake store)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence

import pytest

from keyplane.clock import FrozenClock
from keyplane.errors import InvalidApiKey
from keyplane.keys import format as keyfmt
from keyplane.keys.authenticator import KeyAuthenticator
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.keys.service import KeyService

pytestmark = pytest.mark.anyio
PEPPER = b"unit-test-pepper-" + b"p" * 32
ORG, PROJECT = "org-1", "proj_1"


class FakeKeyStore:
    """The KeyStore protocol in memory; change sequence number == number of changes so far."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.changes: list[str] = []
        self.calls: list[str] = []
        self.used: dict[str, tuple[int, str | None]] = {}
        self.on_get: Callable[[str], None] | None = None

    def get(self, key_id: str) -> ApiKey | None:
        self.calls.append("get")
        key = self.keys.get(key_id)
        if self.on_get is not None:
            self.on_get(key_id)  # runs after the read: what we return may now be stale
        return key

    def add(self, key: ApiKey) -> None:
        self.calls.append("add")
        self.keys[key.id] = key
        self.changes.append(key.id)

    def list(self, org_id: str, project_id: str | None = None) -> Sequence[ApiKey]:
        self.calls.append("list")
        keys = [k for k in self.keys.values() if k.org_id == org_id]
        keys = [k for k in keys if project_id in (None, k.project_id)]
        return sorted(keys, key=lambda k: -k.created_at)

    def revoke(self, key_id: str, at: int) -> bool:
        self.calls.append("revoke")
        key = self.keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self.keys[key_id] = dataclasses.replace(key, revoked_at=at)
        self.changes.append(key_id)
        return True

    def changes_since(self, seq: int | None) -> tuple[int, Sequence[str]]:
        self.calls.append("changes_since")
        return len(self.changes), [] if seq is None else list(dict.fromkeys(self.changes[seq:]))

    def record_use(self, uses: Mapping[str, tuple[int, str | None]]) -> None:
        self.calls.append("record_use")
        self.used.update(uses)

    def rehash(self, rehashes: Mapping[str, tuple[str, str]], pepper_id: str) -> None:
        self.calls.append("rehash")
        for key_id, (old, new) in rehashes.items():
            key = self.keys[key_id]
            if key.secret_hash == old:
                self.keys[key_id] = dataclasses.replace(key, secret_hash=new, pepper_id=pepper_id)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1_800_000_000.0)


@pytest.fixture
def store() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def service(store: FakeKeyStore, clock: FrozenClock) -> KeyService:
    return KeyService(store, PEPPER, clock)


@pytest.fixture
async def auth(store: FakeKeyStore, clock: FrozenClock) -> KeyAuthenticator:
    authenticator = KeyAuthenticator(store, PEPPER, clock)
    await authenticator.refresh()  # as the gateway does at startup
    return authenticator


def create(service: KeyService, **kwargs: object) -> tuple[ApiKey, str]:
    return service.create(
        kind=KeyKind.PROJECT, org_id=ORG, project_id=PROJECT, name="ci", owner_type="user",
        owner_id="user-1", created_by="user-1", **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def forge(kind: str, public_id: str, secret: str) -> str:
    """A well-formed key (valid checksum) of the given parts."""
    head = f"sk-kp-{kind}-{public_id}{secret}"
    return head + keyfmt.checksum(head)


async def refused(auth: KeyAuthenticator, token: str, match: str | None = None) -> str:
    with pytest.raises(InvalidApiKey, match=match) as info:
        await auth.authenticate(token, "10.0.0.1")
    message = info.value.message
    assert not token or token not in message
    parsed = keyfmt.parse(token)
    if parsed is not None:
        assert parsed.secret not in message
    return message


async def test_created_key_authenticates_and_is_stored_without_its_secret(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    key, text = create(service)
    secret = keyfmt.parse(text).secret  # type: ignore[union-attr]

    assert (await auth.authenticate(text, "10.0.0.1")).id == key.id
    assert secret not in repr(key)
    assert key.redacted_value == keyfmt.redact(text)


async def test_wrong_secret_with_the_right_public_id_is_refused(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    _, text = create(service)
    parsed = keyfmt.parse(text)
    assert parsed is not None
    forged = forge("proj", parsed.public_id, "A" * 32)

    message = await refused(auth, forged, "Incorrect API key")
    assert parsed.secret not in message
    assert forged[-4:] in message  # the redacted form, as OpenAI shows it


async def test_a_wrong_secret_is_refused_after_the_right_one_was_accepted(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    key, text = create(service)
    parsed = keyfmt.parse(text)
    assert parsed is not None
    assert (await auth.authenticate(text, "10.0.0.1")).id == key.id  # verified once, remembered
    for secret in ("A" * 32, parsed.secret[:-1] + ("B" if parsed.secret[-1] != "B" else "C")):
        await refused(auth, forge("proj", parsed.public_id, secret), "Incorrect API key")
    assert (await auth.authenticate(text, "10.0.0.1")).id == key.id


async def test_a_token_differing_only_in_its_checksum_is_refused_after_the_right_one(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    key, text = create(service)
    assert (await auth.authenticate(text, "10.0.0.1")).id == key.id
    last = "0" if text[-1] != "0" else "1"
    for token in (text[:-1] + last, text + "x", text + "\u00e9", "\u00e9" + text):
        await refused(auth, token, "not a keyplane key")
    assert (await auth.authenticate(text, "10.0.0.1")).id == key.id


async def test_right_secret_under_another_kind_is_refused(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    _, text = create(service)
    parsed = keyfmt.parse(text)
    assert parsed is not None
    as_admin = forge("admin", parsed.public_id, parsed.secret)
    await refused(auth, as_admin, "Incorrect API key")


@pytest.mark.parametrize("mangle", ["flip", "truncate", "garbage", "empty", "openai"])
async def test_malformed_tokens_are_refused_without_touching_the_store(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore, mangle: str
) -> None:
    _, text = create(service)
    tokens = {
        "flip": text[:20] + ("x" if text[20] != "x" else "y") + text[21:],
        "truncate": text[:-1],
        "garbage": "not-a-key",
        "empty": "",
        "openai": "sk-proj-" + "a" * 48,
    }
    store.calls.clear()
    message = await refused(auth, tokens[mangle], "not a keyplane key")
    assert text[11:55] not in message
    assert store.calls == []


async def test_second_authentication_is_served_from_the_cache(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore
) -> None:
    _, text = create(service)
    await auth.authenticate(text, "10.0.0.1")
    await auth.authenticate(text, "10.0.0.1")
    assert store.calls.count("get") == 1


async def test_revoked_key_is_refused_after_refresh(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    key, text = create(service)
    await auth.authenticate(text, "10.0.0.1")
    auth.take_uses()

    service.revoke(ORG, key.id)
    assert await auth.refresh() == 1
    message = await refused(auth, text, "revoked")
    assert key.redacted_value in message
    assert auth.take_uses() == {}  # a refused request is not a use


async def test_key_expires_at_its_expiry_time(
    auth: KeyAuthenticator, service: KeyService, clock: FrozenClock
) -> None:
    _, text = create(service, expires_in_s=60)
    await auth.authenticate(text, None)
    clock.advance(59)
    await auth.authenticate(text, None)
    clock.advance(1)
    await refused(auth, text, "expired")


async def test_unknown_id_is_negatively_cached_until_a_change_arrives(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore, clock: FrozenClock
) -> None:
    text, parsed = keyfmt.generate(KeyKind.PROJECT)
    await refused(auth, text, "Incorrect API key")
    await refused(auth, text, "Incorrect API key")
    assert store.calls.count("get") == 1

    # Another process stores a key with this id (e.g. an import): a change event is appended.
    template, _ = create(service)
    store.add(
        dataclasses.replace(
            template,
            id=keyfmt.key_id(parsed.public_id),
            secret_hash=keyfmt.hash_secret(PEPPER, parsed.secret),
            redacted_value=keyfmt.redact(text),
        )
    )
    await auth.refresh()
    assert (await auth.authenticate(text, None)).id == keyfmt.key_id(parsed.public_id)
    assert store.calls.count("get") == 2


async def test_a_read_overtaken_by_refresh_is_not_cached(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore
) -> None:
    key, text = create(service)
    read_done, release = threading.Event(), threading.Event()

    def pause(_: str) -> None:
        read_done.set()
        assert release.wait(10)

    store.on_get = pause
    in_flight = asyncio.create_task(auth.authenticate(text, None))
    assert await asyncio.to_thread(read_done.wait, 10)
    store.on_get = None
    service.revoke(ORG, key.id)  # lands after the read, before the read is cached
    assert await auth.refresh() == 1
    release.set()
    await in_flight  # this request was already past the store

    reads = store.calls.count("get")
    await refused(auth, text, "revoked")
    assert (
        store.calls.count("get") == reads + 1
    )  # read again, not served from a resurrected cache entry


async def test_a_read_overtaken_by_forget_is_not_cached(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore
) -> None:
    _, text = create(service)
    store.on_get = auth.forget
    await auth.authenticate(text, None)
    store.on_get = None
    await auth.authenticate(text, None)
    assert store.calls.count("get") == 2


async def test_key_cached_before_the_first_refresh_is_still_revocable(
    store: FakeKeyStore, service: KeyService, clock: FrozenClock
) -> None:
    auth = KeyAuthenticator(store, PEPPER, clock)  # startup refresh failed (StoreUnavailable)
    key, text = create(service)
    await auth.authenticate(text, None)
    service.revoke(ORG, key.id)
    await auth.refresh()
    await auth.refresh()
    await refused(auth, text, "revoked")


async def test_take_uses_coalesces_the_latest_use_per_key(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore, clock: FrozenClock
) -> None:
    first, text1 = create(service)
    second, text2 = create(service)
    key1 = await auth.authenticate(text1, "10.0.0.1")
    assert auth.take_uses() == {}  # authenticated is not used: the request may be refused yet
    auth.used(key1, "10.0.0.1", clock.now())
    clock.advance(5.7)
    auth.used(await auth.authenticate(text1, "10.0.0.2"), "10.0.0.2", clock.now())
    auth.used(await auth.authenticate(text2, None), None, clock.now())
    await refused(auth, text1[:-1])

    uses = auth.take_uses()
    t = int(clock.now())
    assert uses == {first.id: (t, "10.0.0.2"), second.id: (t, None)}
    assert auth.take_uses() == {}
    auth.store_uses(uses)
    assert store.used == uses


async def small_cache_in_use(
    store: FakeKeyStore, service: KeyService, clock: FrozenClock, *, max_entries: int, keys: int
) -> tuple[KeyAuthenticator, list[str]]:
    """An authenticator holding at most ``max_entries`` keys, after ``keys`` new keys were used."""
    auth = KeyAuthenticator(store, PEPPER, clock, max_entries=max_entries)
    await auth.refresh()
    texts = [create(service)[1] for _ in range(keys)]
    for text in texts:
        await auth.authenticate(text, None)
    return auth, texts


async def test_a_full_cache_drops_its_oldest_keys_not_all_of_them(
    store: FakeKeyStore, service: KeyService, clock: FrozenClock
) -> None:
    auth, texts = await small_cache_in_use(store, service, clock, max_entries=16, keys=17)
    assert store.calls.count("get") == 17
    assert auth.cached == 15  # the 17th made room by dropping the oldest eighth (2 keys)

    for text in texts[2:]:  # still cached: no database read
        await auth.authenticate(text, None)
    assert store.calls.count("get") == 17
    await auth.authenticate(texts[0], None)  # dropped: read again, and accepted
    assert store.calls.count("get") == 18


async def test_a_flood_of_unknown_ids_does_not_evict_known_keys(
    store: FakeKeyStore, service: KeyService, clock: FrozenClock
) -> None:
    auth, texts = await small_cache_in_use(store, service, clock, max_entries=4, keys=4)
    reads = store.calls.count("get")

    for _ in range(50):
        await refused(auth, keyfmt.generate(KeyKind.PROJECT)[0], "Incorrect API key")
    assert store.calls.count("get") == reads + 50
    for text in texts:
        await auth.authenticate(text, None)
    assert store.calls.count("get") == reads + 50
    assert auth.cached == 4


async def test_failed_attempts_from_one_address_are_throttled_not_its_working_keys(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore, clock: FrozenClock
) -> None:
    """Past MAX_FAILURES bad tokens in a window from one address, new tokens from it are refused
    without a database read; a key that already worked keeps working from it, other addresses are
    not affected, and the window's end lifts it."""
    from keyplane.errors import TooManyFailures
    from keyplane.keys.authenticator import FAILURE_WINDOW_S, MAX_FAILURES

    _, working = create(service)
    _, fresh = create(service)
    await auth.authenticate(working, "203.0.113.9")
    guesses = [forge("proj", f"guess{i:07d}", "s" * 32) for i in range(MAX_FAILURES + 1)]
    for guess in guesses[:MAX_FAILURES]:
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(guess, "203.0.113.9")
    reads = store.calls.count("get")
    with pytest.raises(TooManyFailures) as refused:
        await auth.authenticate(guesses[-1], "203.0.113.9")
    assert store.calls.count("get") == reads  # refused before any database read
    assert 0 < refused.value.retry_after_s <= FAILURE_WINDOW_S
    assert "203.0.113.9" in refused.value.message
    with pytest.raises(TooManyFailures):  # a real key not verified here yet waits too
        await auth.authenticate(fresh, "203.0.113.9")
    assert (await auth.authenticate(working, "203.0.113.9")).org_id == ORG
    assert (await auth.authenticate(fresh, "198.51.100.7")).org_id == ORG  # another address
    clock.advance(FAILURE_WINDOW_S)
    with pytest.raises(InvalidApiKey):  # the window is over: a guess is just wrong again
        await auth.authenticate(guesses[-1], "203.0.113.9")


async def test_a_revoked_key_in_use_is_not_counted_as_an_attack(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    from keyplane.keys.authenticator import MAX_FAILURES

    key, secret = create(service)
    service.revoke(ORG, key.id)
    await auth.refresh()
    for _ in range(MAX_FAILURES + 5):
        with pytest.raises(InvalidApiKey, match="revoked"):
            await auth.authenticate(secret, "203.0.113.9")
    _, other = create(service)
    assert (await auth.authenticate(other, "203.0.113.9")).org_id == ORG


async def test_an_ipv6_host_counts_its_failures_with_its_whole_64(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    from keyplane.errors import TooManyFailures
    from keyplane.keys.authenticator import MAX_FAILURES

    for i in range(MAX_FAILURES):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(
                forge("proj", f"guess{i:07d}", "s" * 32), f"2001:db8:1:2::{i:x}"
            )
    with pytest.raises(TooManyFailures):
        await auth.authenticate(forge("proj", "guessnext000", "s" * 32), "2001:db8:1:2:ffff::1")
    _, secret = create(service)
    assert (await auth.authenticate(secret, "2001:db8:1:3::1")).org_id == ORG  # the next /64


async def test_a_burst_of_first_requests_with_a_key_reads_it_once(
    auth: KeyAuthenticator, service: KeyService, store: FakeKeyStore
) -> None:
    """A gateway just started, many requests with one key at once: one read, theirs to share.
    (A read each queued them for the few worker threads; on a busy machine the last waited past
    the read timeout and were answered 503 with the database answering.)"""
    key, text = create(service)
    store.calls.clear()
    keys = await asyncio.gather(*(auth.authenticate(text, "10.0.0.1") for _ in range(50)))
    assert {k.id for k in keys} == {key.id}
    assert store.calls == ["get"]


OLD_PEPPER = b"unit-test-old-pepper-" + b"o" * 32


async def test_a_key_on_a_previous_pepper_authenticates_and_is_hashed_again_once(
    store: FakeKeyStore, clock: FrozenClock
) -> None:
    before, secret = create(KeyService(store, OLD_PEPPER, clock))
    assert before.pepper_id == keyfmt.pepper_id(OLD_PEPPER)
    peppers = keyfmt.Peppers(PEPPER, [OLD_PEPPER])
    auth = KeyAuthenticator(store, peppers, clock)
    await auth.refresh()

    for _ in range(3):
        assert (await auth.authenticate(secret, "10.0.0.1")).id == before.id
    rehashes = auth.take_rehashes()
    assert list(rehashes) == [before.id]  # (once: the token is remembered after the first)
    auth.store_rehashes(rehashes)
    after = store.keys[before.id]
    assert after.pepper_id == peppers.current_id
    assert after.secret_hash == keyfmt.hash_secret(PEPPER, keyfmt.parse(secret).secret)  # type: ignore[union-attr]
    assert auth.take_rehashes() == {}

    fresh = KeyAuthenticator(store, PEPPER, clock)  # the old pepper removed: the key still works
    await fresh.refresh()
    assert (await fresh.authenticate(secret, "10.0.0.1")).id == before.id
    assert fresh.take_rehashes() == {}


async def test_a_key_on_a_removed_pepper_is_refused(
    store: FakeKeyStore, clock: FrozenClock
) -> None:
    _, secret = create(KeyService(store, OLD_PEPPER, clock))
    auth = KeyAuthenticator(store, PEPPER, clock)
    await auth.refresh()
    await refused(auth, secret, "Incorrect API key")
    assert auth.take_rehashes() == {}


async def test_keys_on_the_current_pepper_are_not_hashed_again(
    auth: KeyAuthenticator, service: KeyService
) -> None:
    _, secret = create(service)
    await auth.authenticate(secret, "10.0.0.1")
    assert auth.take_rehashes() == {}
