"""Holds on the request path: reserve the worst case before forwarding, settle the real cost after.

Policy (BRIEF C12, STYLE 7): money checks fail closed. If the organization's money state cannot be
loaded or a hold cannot be written durably, the request gets 503 and is not forwarded.

The embedded default keeps each organization's ``OrgMoney`` in this process (the only process that
places holds on this database), loaded on first use and kept in step with changes made elsewhere
(CLI, Admin API) through the ``money_events`` feed. A hold is appended to the hold journal (a local
file, gateway/journal.py) before the request is forwarded — no database round trip on the request
path; the batch flushed every few hundred milliseconds then stores new holds and settlements (with
their usage records and ledger entries) in one transaction. If the process dies in between, the
next gateway recovers the journal, and its sweeper settles the hold at the hold amount (the most
the request could have cost) with a ``gateway_lost`` usage record; a hold the dead gateway had
stored open is settled the same way once no live gateway is older than it (``sweep``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TypeVar, final

from keyplane import reads
from keyplane.billing.bounds import CostBound
from keyplane.billing.periods import period_of
from keyplane.billing.ports import MoneyEvent, MoneyStore
from keyplane.billing.wallet import Hold, Lot, OrgMoney, Outcome, Scope
from keyplane.clock import Clock
from keyplane.errors import SpendRefused, StoreUnavailable
from keyplane.gateway.housekeeping import housekeeping_thread
from keyplane.gateway.journal import HoldJournal, Segment
from keyplane.gateway.meter import Meter
from keyplane.ids import new_id
from keyplane.keys.models import ApiKey
from keyplane.usage.pricing import format_usd
from keyplane.usage.records import Outcome as RequestOutcome
from keyplane.usage.records import UsageRecord
from keyplane.values import Value

CHECKPOINT_AFTER = 4_000  # settlements: ~1,000 pages of SQLite WAL
LOOP_SHARE = 0.5  # settlement writing per loop pass, relative to the rest of the pass
MIN_SLICE_S = 0.0001  # settlement writing per pass when the rest of the loop is idle
MAX_SLICE_S = 0.005  # and at most, however long the rest of the pass took
RELEASE_SLICE = 100  # settlements freed per pass of the loop once stored
log = logging.getLogger("keyplane.money")
T = TypeVar("T")

REFUSALS = {
    Scope.CREDITS: "You exceeded your current quota, please check your plan and billing details.",
    Scope.USAGE_LIMIT: "You exceeded your organization's monthly usage limit; it resets at the start of next month (UTC).",
    Scope.ORG_BUDGET: "Your organization has reached its monthly budget; requests are rejected until the budget is raised or the month ends (UTC).",
    Scope.PROJECT_BUDGET: "This project has reached its monthly budget; requests are rejected until the budget is raised or the month ends (UTC).",
}


# What is left, once some is: why a request that may cost more is refused anyway.
_LEFT = {
    Scope.CREDITS: "of your credit balance",
    Scope.USAGE_LIMIT: "of your organization's monthly usage limit",
    Scope.ORG_BUDGET: "of your organization's monthly budget",
    Scope.PROJECT_BUDGET: "of this project's monthly budget",
}


# What a request's hold counts, and how to make it smaller, by endpoint (tokens otherwise).
_HELD = {
    "images.generations": (
        "every image it asks for, at the price of its quality and size",
        "fewer images (n), or a smaller size or lower quality",
    ),
    "images.edits": (
        "every image it asks for, at the price of its quality and size, and on a model priced by "
        "tokens the images it uploads at their most",
        "fewer images (n), a smaller size or lower quality, or fewer images to edit",
    ),
    "images.variations": (
        "every image it asks for, at the price of its size",
        "fewer images (n), or a smaller size",
    ),
    # (A transcription priced by tokens, gpt-4o-transcribe, holds all its model may read and
    # write, whatever the recording: only a cheaper model holds less.)
    "audio.transcriptions": (
        "the longest its upload may play, or, on a model priced by tokens, all it may read and "
        "write",
        "a shorter recording, or use a cheaper model",
    ),
    "audio.translations": ("the longest its upload may play", "a shorter recording"),
    "audio.speech": ("every character of its input", "less text"),
}
_TOKENS_HELD = (
    "its prompt counted at its longest, and a few output tokens",
    "a smaller request (a shorter prompt, fewer images)",
)


def refusal(scope: Scope, left: int, least: int, endpoint: str = "") -> str:
    """The refusal's message: the scope is used up, or what is left of it cannot cover the least
    this request may cost (for tokens: its prompt counted at a token a byte, plus the fewest
    output tokens keyplane lowers ``max_tokens`` to; for ``endpoint``s priced otherwise, what
    ``_HELD`` says)."""
    if left <= 0:
        return REFUSALS[scope]
    counted, smaller = _HELD.get(endpoint, _TOKENS_HELD)
    return (
        f"This request needs ${format_usd(least)} held ({counted}), more than the "
        f"${format_usd(left)} left {_LEFT[scope]} (requests in flight included). Send {smaller}, "
        "or raise the limit."
    )


RETRY_IN_FLIGHT_S = 1.0  # a refusal that requests in flight cause: worth trying again this soon


def busy_refusal(scope: Scope, left: int, least: int, in_flight: int, requests: int) -> str:
    """The message of a refusal that only requests in flight cause: their holds (the most each may
    cost) take what this one needs, and are released to what each really cost as they finish."""
    return (
        f"This request needs ${format_usd(least)} held, and ${format_usd(max(left, 0))} is left "
        f"{_LEFT[scope]} while {requests} other request{'s' if requests != 1 else ''} in flight "
        f"hold ${format_usd(in_flight)} (the most each may cost, released to what it really costs "
        "when it finishes). Try again shortly; setting max_tokens makes each request hold less."
    )


@final
class Admission(Value):
    FIELDS = ("hold", "output_tokens", "clamped")
    __slots__ = FIELDS

    def __init__(self, hold: Hold, output_tokens: int, clamped: bool) -> None:
        self.hold = hold
        # The output the hold covers: the cap to send when it is below the request's (clamped).
        self.output_tokens = output_tokens
        self.clamped = clamped


class MoneyGuard:
    def __init__(
        self,
        store: MoneyStore,
        clock: Clock,
        journal: HoldJournal,
        *,
        usage_limit_for: Callable[[str | None], int],
        hold_ttl_s: int,
        min_output_tokens: int,
        batch_size: int = 500,
        max_unstored: int = 100_000,
        checkpoint_after: int = CHECKPOINT_AFTER,
        flush_interval_s: float = 0.2,
        gateway_timeout_s: int = 30,
        meter: Meter | None = None,
    ) -> None:
        self._store = store
        # This process among the gateways on its database (``beat``): holds stored open that were
        # placed before every live gateway started are a dead gateway's.
        self.gateway_id = new_id("gw_")
        self._started = clock.now()
        self._started_at = int(self._started)  # (whole seconds, as the table keeps it)
        self._gateway_timeout_s = gateway_timeout_s
        self.meter = meter if meter is not None else Meter()  # counts what each flush stored
        self._clock = clock
        self._usage_limit_for = usage_limit_for
        self._hold_ttl_s = hold_ttl_s
        self._min_output = min_output_tokens
        self._orgs: dict[str, OrgMoney] = {}
        self._loading: dict[str, asyncio.Future[OrgMoney]] = {}
        self._journal = journal
        self._batch_size = batch_size
        self._max_unstored = max_unstored
        self._segments: list[Segment] = []  # journaled holds not yet in the database
        # A retried flush stored settlements whose holds the journal's current segment still has.
        self._settled_ahead = False
        self._outcomes: deque[Outcome] = deque()  # settlements not yet in the database
        self._live: set[str] = set()  # holds of this process's requests still in flight
        self._orphans: set[str] = set()  # holds recovered from dead gateways, not swept yet
        self._flushing = asyncio.Lock()
        self._to_discard: list[Segment] = []  # stored segments not deleted yet
        self._tidying: asyncio.Task[None] | None = None
        # The journal's file work and the WAL checkpoint, below the event loop's priority.
        self._housekeeping = housekeeping_thread()
        self._unchecked = 0  # settlements written on the loop since the last WAL checkpoint
        self._checkpoint_after = checkpoint_after
        self._checkpointing: asyncio.Task[None] | None = None
        self._flush_interval_s = flush_interval_s  # how often the gateway starts a flush
        self._flush_started = 0.0  # time.perf_counter() when the current flush started
        self._seq: int | None = None
        self._refreshing = asyncio.Lock()
        # Organizations with settlements stored since take_touched, or whose credit a refund or a
        # dispute took (or gave) back: what the spend watcher checks.
        self.touched: set[str] = set()
        # Told of feed events this guard does not handle itself (rate-limit overrides).
        self.listeners: list[Callable[[MoneyEvent], None]] = []

    # -- the request path ---------------------------------------------------------------------
    def cached_org(self, org_id: str) -> OrgMoney | None:
        """``org`` when it is loaded already (no await on the request path)."""
        return self._orgs.get(org_id)

    def admit(
        self, org: OrgMoney, key: ApiKey, request_id: str, model: str, endpoint: str,
        bound: CostBound, output_tokens: int, now: float,
    ) -> Admission:  # fmt: skip
        """Places a hold on ``org`` (the key's, from ``org()``) for the request's worst case,
        lowering ``output_tokens`` if only that fits. Synchronous, journal included: no other
        request can take the same money in between.

        Raises SpendRefused (no scope has room), StoreUnavailable (fail closed)."""
        if len(self._outcomes) >= self._max_unstored:
            # The database has been unreachable for a while: stop before memory does.
            raise StoreUnavailable("Usage cannot be recorded right now.")
        hold = Hold(
            id=request_id, org_id=key.org_id, project_id=key.project_id or "",
            amount=bound.cost(output_tokens), period=period_of(now), created_at=int(now),
            expires_at=int(now) + self._hold_ttl_s, key_id=key.id, model=model, endpoint=endpoint,
        )  # fmt: skip
        refused = org.place_hold(hold)
        clamped = False
        if refused is not None:  # only a lower output cap could fit: the most the room affords
            affordable = bound.max_output_for(refused.headroom) if output_tokens else -1
            least = min(output_tokens, self._min_output)
            if affordable < least or affordable < 0:
                raise self._refused(org, hold, refused.scope, refused.headroom, bound.cost(least))
            output_tokens, clamped = affordable, True
            hold = hold.replace(amount=bound.cost(affordable))
            refused = org.place_hold(hold)
            assert refused is None, "the clamped amount fits the room just reported"
        try:
            self._journal.append(hold)
        except OSError as exc:
            org.void(hold.id)
            log.error("cannot write the hold journal: %s", exc)
            raise StoreUnavailable("Could not record the spending hold.") from None
        self._live.add(hold.id)
        return Admission(hold, output_tokens, clamped)

    @staticmethod
    def _refused(org: OrgMoney, hold: Hold, scope: Scope, left: int, least: int) -> SpendRefused:
        """The refusal: final when the scope itself cannot cover ``least``, retryable when only
        the holds of requests in flight stand in the way (they are released as they finish)."""
        # The holds that take from the same room: the project's own for its budget, and for a
        # monthly scope only those of this month (credits are not monthly).
        project_only = scope is Scope.PROJECT_BUDGET
        monthly = scope is not Scope.CREDITS
        holds = [
            h.amount
            for h in org.holds.values()
            if (not project_only or h.project_id == hold.project_id)
            and (not monthly or h.period == hold.period)
        ]
        if holds and left + sum(holds) >= least:
            message = busy_refusal(scope, left, least, sum(holds), len(holds))
            return SpendRefused(scope.value, message, retry_after_s=RETRY_IN_FLIGHT_S)
        return SpendRefused(scope.value, refusal(scope, left, least, hold.endpoint))

    def finish(self, hold: Hold, record: UsageRecord) -> UsageRecord:
        """Settles the request at its real cost (never more than the hold) and queues the usage
        record with the settlement. Returns the record as stored."""
        self._live.discard(hold.id)
        org = self._orgs[hold.org_id]
        settlement = org.settle(hold.id, record.cost_micro_usd)
        if settlement is None:
            log.warning(
                "hold %s was already resolved (expired and swept); usage not recorded twice",
                hold.id,
            )
            return record
        if settlement.cost > settlement.charged:
            log.warning(
                "request %s cost %d micro-USD, more than its hold of %d: charged the hold",
                hold.id, settlement.cost, settlement.charged,
            )  # fmt: skip
        stored = record
        if record.cost_micro_usd != settlement.charged or record.period != hold.period:
            stored = record.replace(cost_micro_usd=settlement.charged, period=hold.period)
        self._outcomes.append(Outcome(stored, settlement))
        return stored

    # -- what /metrics shows -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Holds of requests this process is still answering."""
        return len(self._live)

    @property
    def cached_orgs(self) -> int:
        return len(self._orgs)

    @property
    def max_unstored(self) -> int:
        """Settlements queued at which requests are refused (503)."""
        return self._max_unstored

    @property
    def queued(self) -> int:
        """Settlements not stored yet."""
        return len(self._outcomes)

    # -- background ---------------------------------------------------------------------------
    async def flush(self) -> int:
        """Stores the holds journaled and the settlements made since the last flush; returns how
        many settlements were stored. Raises StoreUnavailable (everything stays queued and the
        journal stays on disk: the next flush retries)."""
        async with self._flushing:
            # The holds journaled since the last flush have never been handed to the store, so
            # their requests need not be looked up there; unless the last flush was a retry (of
            # segments a failed flush left: stored first, keeping one open file), which stored
            # settlements whose holds were still in the journal's current segment.
            fresh = not self._segments and not self._settled_ahead
            self._settled_ahead = bool(self._segments)
            if not self._segments:
                self._segments = self._journal.rotate()
            new_holds = [h for seg in self._segments for h in seg.holds]
            never_stored = {h.id for h in new_holds} if fresh else set()
            # Only what is queued now: settlements made while this flush writes wait for the next
            # one. Chasing them kept a flush running back to back with batches of a few requests
            # each, a transaction apiece (at c=1, 3,200 flushes in 5 s averaging 7 settlements).
            pending = len(self._outcomes)
            stored = 0
            self._flush_started = time.perf_counter()
            while pending or new_holds:
                # Each batch starts on a pass of the loop of its own: reading the journal's holds,
                # the previous batch's bookkeeping and this one's opening together held the loop
                # for ~0.5-0.9 ms (c=1 p99, bench/RESULTS.md).
                await asyncio.sleep(0)
                size = min(self._batch_size, pending)
                # (islice, not indexing: a deque's item i costs a walk to it)
                batch = list(islice(self._outcomes, size))
                # A hold settled in a later batch of this flush is not stored open only to be
                # deleted a batch later (at 1,200 settlements a flush, 900 holds were): the
                # journal keeps it until the whole flush is stored.
                if new_holds and pending > size:
                    later = {o.record.request_id for o in islice(self._outcomes, size, pending)}
                    holds = [h for h in new_holds if h.id not in later]
                else:
                    holds = new_holds
                stored += await self._resolve(batch, int(self._clock.now()), holds, never_stored)
                meter = self.meter
                for outcome in batch:
                    self._outcomes.popleft()
                    self.touched.add(outcome.record.org_id)
                    never_stored.discard(outcome.record.request_id)
                    meter.settle(outcome.record)
                pending -= size
                new_holds = []
                await _release(batch)
            self._tidy(self._segments)
            self._segments = []
            self._checkpoint_if_due()
            return stored

    async def _resolve(
        self, batch: list[Outcome], at: int, new_holds: list[Hold], never_stored: set[str]
    ) -> int:
        """Writes a batch on the event loop a slice at a time when the store can (SQLite, write
        lock free), else on a worker thread. On the loop there is no GIL to hand back and forth
        with a worker thread, which cost more CPU than the writes themselves (~130 against ~50 µs
        per settlement, bench/RESULTS.md). Each pass of the loop runs slices for ``LOOP_SHARE`` of
        the time the rest of that pass took (at least one slice): near 100 µs at one connection,
        enough to keep up with thousands of settlements a second at many. A flush still running
        when the next is due is falling behind: its share grows with the intervals it has lasted
        (twice at two, four times at four…), so the queue stays a few intervals' worth whatever
        slowed it (the process keeps the memory a queue once took, bench/RESULTS.md)."""
        steps = self._store.resolve_stepwise(batch, at, new_holds, never_stored)
        if steps is None:
            return await asyncio.to_thread(
                self._store.resolve, batch, at, new_holds, frozenset(never_stored)
            )
        away = 0.0  # how long the rest of the loop's last pass took
        try:
            await asyncio.sleep(0)  # (opening the batch was a step: writing starts on the next)
            while True:
                # A share of that: under load, one slice of a few rows per pass fell far behind
                # the settlements coming in (at 64 connections a pass serves dozens of requests:
                # 500 settlements took 4 s to write); when idle, one slice at a time.
                start = time.perf_counter()
                behind = (start - self._flush_started) / self._flush_interval_s
                share = LOOP_SHARE * behind if behind > 1.0 else LOOP_SHARE
                budget = min(MAX_SLICE_S, max(MIN_SLICE_S, share * away))
                try:
                    next(steps)
                    while time.perf_counter() - start < budget:
                        next(steps)
                except StopIteration as done:
                    count: int = done.value
                    break
                left = time.perf_counter()
                await asyncio.sleep(0)
                away = time.perf_counter() - left
        finally:
            steps.close()
        await asyncio.sleep(0)  # (the commit was a step: what follows, another)
        self._unchecked += count
        return count

    def _checkpoint_if_due(self) -> None:
        """Starts a WAL checkpoint on a worker thread once ``checkpoint_after`` settlements were
        written on the loop since the last, about as often as SQLite's own autocheckpoint (1,000
        pages of WAL); one at a time. Flushes do not wait for it: a checkpoint syncs the WAL and
        the database file to disk (``synchronous=NORMAL``), 15-50 ms on this VM and at times far
        longer, and a flush that waited let the settlements queue meanwhile (the process keeps the
        memory a backlog once took, bench/RESULTS.md). Started as a flush ends, it usually copies
        the whole WAL before the next batch, so the WAL starts over from its beginning."""
        if self._unchecked < self._checkpoint_after:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return  # (the next flush after it starts another)
        self._unchecked = 0
        self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await self._housekeep(self._store.checkpoint)
        except Exception:  # (the store logs its own failures; never raised into a shutdown)
            log.exception("WAL checkpoint failed")

    def _tidy(self, stored: list[Segment]) -> None:
        """Deletes the stored segments and opens the next append's segment ahead, on the
        housekeeping thread (both take the disk's time: journal.py), without holding up the
        flush."""
        self._to_discard += stored
        if self._tidying is None or self._tidying.done():
            self._tidying = asyncio.get_running_loop().create_task(self._tidy_journal())

    async def _tidy_journal(self) -> None:
        journal = self._journal
        try:
            while self._to_discard:
                done, self._to_discard = self._to_discard, []
                await self._housekeep(functools.partial(journal.discard_all, done))
            if journal.needs_spare:
                journal.add_spare(await self._housekeep(journal.prepare))
        except OSError as exc:  # (an append then opens its own segment, or refuses the hold)
            log.warning("journal housekeeping failed: %s", exc)
        except Exception:  # never raised into a flush or the shutdown waiting for it
            log.exception("journal housekeeping failed")

    async def _housekeep(self, job: Callable[[], T]) -> T:
        """``job()`` on the housekeeping thread (gateway/housekeeping.py)."""
        return await asyncio.get_running_loop().run_in_executor(self._housekeeping, job)

    async def tidied(self) -> None:
        """Returns once the journal housekeeping and the WAL checkpoint started by flushes are
        done (before ``close``)."""
        for task in (self._tidying, self._checkpointing):
            if task is not None:
                await task

    async def leave(self) -> None:
        """Tells the other gateways this one stopped (after its last flush): holds it left open
        are then settled by the next sweep of any gateway, without waiting for its silence."""
        # (Unreachable: silent for ``gateway_timeout_s``, it counts as stopped all the same.)
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(self._store.leave, self.gateway_id)

    def close(self) -> None:
        """Lets go of the journal and the housekeeping thread (call after the last flush and
        ``tidied``)."""
        self._journal.close()
        self._housekeeping.shutdown(wait=False)

    def take_touched(self) -> tuple[set[str], dict[str, OrgMoney]]:
        """Returns the organizations whose settlements were stored since the last call (not those
        settled meanwhile and still queued: the watcher reads spend from the database), or whose
        credit a refund or a dispute moved, with the money states (of those loaded)."""
        touched, self.touched = self.touched, set()
        return touched, self._orgs

    async def recover(self) -> int:
        """Stores the holds of dead gateways' journals as open holds and counts them here; returns
        how many were recovered."""
        recovered = 0
        for segment in self._journal.orphans():
            try:
                fresh = await asyncio.to_thread(self._store.restore_holds, segment.holds)
            except BaseException:
                self._journal.release(segment)
                raise
            self._journal.discard(segment)
            self._orphans.update(hold.id for hold in fresh)  # settled by the next sweep
            for hold in fresh:
                org = self._orgs.get(hold.org_id)
                if org is not None:
                    org.restore_hold(hold)
                else:
                    await self.org(hold.org_id)  # loads the hold with the rest
            if fresh:
                log.warning("recovered %d holds of a gateway that stopped abruptly", len(fresh))
            recovered += len(fresh)
        return recovered

    async def sweep(self) -> int:
        """Settles at their full amount the holds whose gateway died: at once those recovered from
        dead gateways' journals (recovered first) and those placed before every live gateway
        started (``beat``), the rest once expired; returns how many. The record is dated when the
        request came. A hold of a request this process is still answering is not swept, however
        long it runs (a long stream, a slow reasoning model): it settles at its real cost when
        the answer ends."""
        await self.recover()
        now = self._clock.now()
        try:
            placed_before = await asyncio.to_thread(
                self._store.beat, self.gateway_id, self._started_at, int(now),
                self._gateway_timeout_s,
            )  # fmt: skip
        except StoreUnavailable:
            placed_before = 0  # (which gateways live is unknown: expiry alone)
        cutoff = float(placed_before)
        if placed_before == self._started_at:
            # The oldest live gateway is this one (or started in its second): a hold placed
            # before this process started, to the fraction of a second, is a dead gateway's.
            # (In whole seconds, one placed in the second a restart came up stayed open until
            # it expired.) This one's own are in ``live`` until they settle.
            cutoff = self._started
        swept = 0
        live = self._live
        orphans, self._orphans = self._orphans, set()
        for org in list(self._orgs.values()):
            for hold in [
                h
                for h in org.holds.values()
                if (h.expires_at <= now or h.id in orphans or h.created_at < cutoff)
                and h.id not in live
            ]:
                record = UsageRecord(
                    request_id=hold.id, created_at=int(hold.created_at), org_id=hold.org_id,
                    project_id=hold.project_id or None, key_id=hold.key_id, owner_type="", owner_id="",
                    model=hold.model, endpoint=hold.endpoint, input_tokens=0, cached_input_tokens=0,
                    output_tokens=0, status=0, latency_ms=0, client_ip=None, cost_micro_usd=hold.amount,
                    stream=False, outcome=RequestOutcome.GATEWAY_LOST, tokens_estimated=True,
                )  # fmt: skip
                self.finish(hold, record)
                swept += 1
        return swept

    async def refresh(self) -> int:
        """Applies changes other processes made (grants, revocations, refunds and disputes,
        settings); returns how many.

        Serialized: the poll loop and the Admin API both call it, and two overlapping refreshes
        could otherwise both add the same new lot (counting its credit twice)."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> int:
        if self._seq is None:
            self._seq, _ = await asyncio.to_thread(self._store.events_since, None)
            # Organizations loaded before this first successful read of the feed (the database was
            # down at startup) may have missed changes: bring them up to date.
            for loaded in list(self._orgs.values()):
                await self._resync(loaded)
            for org_id in await asyncio.to_thread(self._store.orgs_with_open_holds):
                await self.org(org_id)  # counts holds left open by a previous process
            return 0
        seq, events = await asyncio.to_thread(self._store.events_since, self._seq)
        self._seq = seq
        for event in events:
            if event.kind not in ("lot_added", "lot_revoked", "settings", "lots_adjusted"):
                for listener in self.listeners:
                    listener(event)
                continue
            if event.kind == "lots_adjusted":
                # A refund or a dispute may have taken the balance under the low-balance alert or
                # auto-recharge's threshold, with no spend to have the watcher look: it looks now
                # (from the database, for an organization not loaded here).
                self.touched.add(event.org_id)
            org = self._orgs.get(event.org_id)
            if org is None:
                continue  # loaded fresh on first use
            if event.kind in ("lot_added", "lots_adjusted"):
                await self._sync_lots(org)
            elif event.kind == "lot_revoked" and event.ref:
                org.revoke_lot(event.ref)
            elif event.kind == "settings":
                await self._apply_settings(org, event.ref)
        return len(events)

    async def org(self, org_id: str) -> OrgMoney:
        """The organization's money state, loaded once (concurrent first requests share the load)."""
        money = self._orgs.get(org_id)
        if money is not None:
            return money
        pending = self._loading.get(org_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[org_id] = pending
            try:
                period = period_of(self._clock.now())
                loaded = await reads.read(self._store.load, org_id, period, self._usage_limit_for)
            except Exception as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
                raise
            else:
                self._orgs[org_id] = loaded
                pending.set_result(loaded)
            finally:
                del self._loading[org_id]
        return await asyncio.shield(pending)

    async def _sync_lots(self, org: OrgMoney) -> None:
        """Adds the lots this process does not know yet, and applies the credit refunds, disputes
        and debt repayments moved on the ones it knows (``Lot.adjusted``, a figure: however often
        it is read, each move counts once). A known lot's remaining credit is this process's own
        (it spends it before the database hears of it), so only the change of ``adjusted`` is
        applied to it, never the stored remaining."""
        stored = await asyncio.to_thread(self._store.lots, org.org_id)
        known = {lot.id for lot in org.lots}  # read after the await: nothing is added twice
        for lot, _note in stored:
            if lot.id in known:
                org.readjust(lot.id, lot.adjusted)
            elif not lot.revoked:
                org.add_lot(
                    Lot(
                        lot.id, lot.kind, lot.amount, lot.remaining, lot.created_at,
                        lot.expires_at, adjusted=lot.adjusted,
                    )
                )  # fmt: skip

    async def _resync(self, org: OrgMoney) -> None:
        await self._apply_settings(org, None)
        for project_id in list(org.project_budgets):
            await self._apply_settings(org, project_id)
        await self._sync_lots(org)
        for lot, _note in await asyncio.to_thread(self._store.lots, org.org_id):
            if lot.revoked:
                org.revoke_lot(lot.id)

    async def _apply_settings(self, org: OrgMoney, project_id: str | None) -> None:
        settings = await asyncio.to_thread(self._store.settings, org.org_id)
        if settings is not None:
            org.mode = settings.mode
            org.usage_limit = (
                self._usage_limit_for(settings.tier)
                if settings.usage_limit is None
                else settings.usage_limit
            )
            org.budget = settings.budget
            org.auto_recharge = settings.auto_recharge
            org.recharge_threshold = settings.recharge_threshold
            org.recharge_target = settings.recharge_target
            org.low_balance_alert = settings.low_balance_alert
            org.tier = settings.tier
        if project_id:
            budget = await asyncio.to_thread(self._store.project_budget, project_id)
            if budget is None:
                org.project_budgets.pop(project_id, None)
            else:
                org.project_budgets[project_id] = budget


async def _release(items: list[Outcome]) -> None:
    """Empties a stored batch a slice per pass of the loop: the last references to its settlements
    go with it, and freeing 500 at once (~5,000 objects) held the loop for ~0.2 ms."""
    while items:
        del items[-RELEASE_SLICE:]
        await asyncio.sleep(0)
