"""The settlement writer: a batch of settlements (usage records, the holds they resolve, the
ledger's lines and running totals) written through the database driver's cursor, a slice at a time
(``resolve_steps``), inside a transaction the caller opened.

Apart from hold_repository.py (SQLAlchemy's classes, which mypyc cannot compile into) so that
scripts/compile.py compiles it with the request path: it runs on the event loop for every
settlement, and as plain Python its own code was about a third of a settlement's instructions
(bench/RESULTS.md). SQL text only from our own table and column names; values only ever as
parameters."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Generator, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain
from typing import Any

from keyplane.billing.wallet import Hold, Outcome
from keyplane.errors import StoreUnavailable
from keyplane.ids import ordered_id
from keyplane.usage.records import UsageRecord

Totals = dict[tuple[str, str, str], int]


def balances(entries: Iterable[tuple[str, str, str | None, int]]) -> Totals:
    """(organization, account, lot or "") → the sum of ``entries``' amounts."""
    out: Totals = {}
    for org_id, account, lot_id, amount in entries:
        key = (org_id, account, lot_id or "")
        out[key] = out.get(key, 0) + amount
    return out


def items(totals: Totals) -> Iterator[tuple[str, str, str, int]]:
    return ((*key, amount) for key, amount in totals.items())


class Writer:
    """A settlement batch's statements at the driver (DB-API cursor), inside the transaction the
    caller opened on the same connection: SQLAlchemy's statement construction, compilation lookup
    and per-call bookkeeping cost ~a quarter of a batch's CPU for statements that are always the
    same few. SQL text only from our own table definitions; values only ever as parameters."""

    def __init__(self, raw: Any, sqlite: bool) -> None:
        self.cursor = raw.cursor()
        self.sqlite = sqlite
        self.mark = "?" if sqlite else "%s"
        self.for_update = "" if sqlite else " FOR UPDATE"

    def statuses(self, ids: list[str]) -> list[tuple[str, str]]:
        """(id, status) of the requests among ``ids`` known to the database: "open" for a hold
        stored open (locked until the commit), "resolved" for a request with a usage record."""
        marks = ", ".join([self.mark] * len(ids))
        self.cursor.execute(
            f"SELECT id, status FROM holds WHERE id IN ({marks}){self.for_update}",  # noqa: S608
            ids,
        )
        found = [(row[0], "open" if row[1] == "open" else "resolved") for row in self.cursor]
        self.cursor.execute(
            f"SELECT request_id FROM usage_records WHERE request_id IN ({marks})",  # noqa: S608
            ids,
        )
        found.extend((row[0], "resolved") for row in self.cursor)
        return found

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """executemany of ``rows`` in the order of ``columns``. (Multi-row ``VALUES`` statements
        were tried: no faster here, and the driver's cache of large prepared statements made the
        process grow by tens of megabytes.)"""
        if rows:
            self.cursor.executemany(insert_sql(table, tuple(columns), self.mark), rows)

    def add(self, table: str, totals: Totals) -> None:
        """Adds ``totals`` to the running totals of ``table`` (``_RUNNING_TOTALS``)."""
        if totals:
            self.cursor.executemany(add_sql(table, self.mark), list(items(totals)))

    def resolve_open(self, ids: list[tuple[str]]) -> None:
        """Removes holds stored open earlier, now resolved (their usage records say how)."""
        if ids:
            self.cursor.executemany(f"DELETE FROM holds WHERE id = {self.mark}", ids)  # noqa: S608


_RUNNING_TOTALS = {  # table → (its key columns, the amount column)
    "spend_totals": (("org_id", "period", "project_id"), "charged_micro"),
    "ledger_balances": (("org_id", "account", "lot_id"), "amount_micro"),
}


@functools.cache
def add_sql(table: str, mark: str) -> str:
    """Adds a row's amount to the running total of its key, creating it if new. (ON CONFLICT …
    DO UPDATE: SQLite 3.24+ and PostgreSQL 9.5+ alike.)"""
    keys, amount = _RUNNING_TOTALS[table]
    names, marks = ", ".join(keys), ", ".join([mark] * (len(keys) + 1))
    return (
        f"INSERT INTO {table} ({names}, {amount}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT ({names}) DO UPDATE SET {amount} = {table}.{amount} + excluded.{amount}"
    )


@functools.cache
def insert_sql(table: str, columns: tuple[str, ...], mark: str) -> str:
    names, marks = ", ".join(columns), ", ".join([mark] * len(columns))
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608


@contextlib.contextmanager
def driver_writer(raw: Any, sqlite: bool, dbapi: Any) -> Iterator[Writer]:
    """A ``Writer`` on the driver connection ``raw``; the driver's connection errors raise
    StoreUnavailable, as they would through SQLAlchemy."""
    db = Writer(raw, sqlite)
    try:
        yield db
    except (dbapi.OperationalError, dbapi.InterfaceError) as exc:
        raise StoreUnavailable("The database is unavailable.") from exc
    finally:
        db.cursor.close()


# A record's fields are the table's columns, in order; a hold's fields are the first of its row's.
_USAGE_COLUMNS = UsageRecord.FIELDS
_LEDGER_COLUMNS = ("txn_id", "org_id", "account", "lot_id", "amount_micro", "created_at")
HOLD_COLUMNS = (
    "id", "org_id", "project_id", "amount_micro", "period", "created_at", "expires_at", "key_id",
    "model", "endpoint", "status",
)  # fmt: skip


def _usage_tuple(r: UsageRecord, sqlite: bool) -> tuple[Any, ...]:
    """``r``'s row, in the order of ``_USAGE_COLUMNS`` (tests/unit/test_values.py checks it).

    On SQLite the booleans as the 0 and 1 it stores: the sqlite3 module binds an ``int`` directly
    but looks for an adapter for a ``bool`` first (~0.2 µs a value, a fifth of a row's binding)."""
    # (``_value_``, the member's value as stored on it: ``.value`` is a property written in Python)
    # (Typed ``object``: compiled, a ``bool`` in an ``int`` expression would be boxed as an int.)
    stream: object = r.stream
    estimated: object = r.tokens_estimated
    if sqlite:
        stream, estimated = int(r.stream), int(r.tokens_estimated)
    return (
        r.request_id, r.created_at, r.org_id, r.project_id, r.key_id, r.owner_type, r.owner_id,
        r.model, r.endpoint, r.input_tokens, r.cached_input_tokens, r.output_tokens, r.status,
        r.latency_ms, r.client_ip, r.cost_micro_usd, stream, r.outcome._value_, estimated,
        r.period, r.images, r.audio_seconds, r.characters, r.input_audio_tokens,
        r.output_audio_tokens,
    )  # fmt: skip


class _Ledger:
    """A settlement batch's double-entry lines, one transaction per organization: -x per lot drawn,
    -y on receivable for what no lot covered (postpaid), +charged on usage, each summed over the
    batch (what each request cost is its usage record).

    Per batch rather than per request: two or three lines per request, each with three index
    entries, were half of the settlement writer's work. Summed as settlements are written, a step
    at a time: summing 500 at the end kept the batch's last step (with the commit) 0.3 ms longer,
    the event loop's longest pause. Also sums what the batch adds to the running totals: the
    accounts' balances and ``spend`` (the usage records' costs per organization, month, project)."""

    def __init__(self) -> None:
        self._per_org: dict[str, dict[tuple[str, str | None], int]] = {}
        self.spend: Totals = {}

    def add(self, outcome: Outcome) -> None:
        record = outcome.record
        if record.cost_micro_usd:
            where = (record.org_id, record.period, record.project_id or "")
            self.spend[where] = self.spend.get(where, 0) + record.cost_micro_usd
        settlement = outcome.settlement
        if settlement is None or settlement.charged == 0:
            return
        lines = self._per_org.setdefault(outcome.record.org_id, {})
        for lot_id, amount in settlement.consumed:
            lines[("lot", lot_id)] = lines.get(("lot", lot_id), 0) - amount
        if settlement.uncovered:
            receivable = ("receivable", None)
            lines[receivable] = lines.get(receivable, 0) - settlement.uncovered
        lines[_USAGE] = lines.get(_USAGE, 0) + settlement.charged

    def balances(self) -> Totals:
        """The lines per (organization, account, lot or "")."""
        return balances(
            (org_id, account, lot_id, amount)
            for org_id, lines in self._per_org.items()
            for (account, lot_id), amount in lines.items()
        )

    def rows(self, at: int) -> list[tuple[Any, ...]]:
        """The lines as rows in the order of ``_LEDGER_COLUMNS``."""
        rows: list[tuple[Any, ...]] = []
        for org_id, lines in self._per_org.items():
            txn = ordered_id("stl_")
            rows.extend(
                (txn, org_id, acct, lot, amount, at) for (acct, lot), amount in lines.items()
            )
        return rows


_USAGE: tuple[str, str | None] = ("usage", None)


# A step of resolve_stepwise: ~100 µs of the event loop.
STEP_SETTLEMENTS = 8  # settlements written per step
SELECT_IDS = 32  # holds looked up per step


def resolve_steps(
    writer: contextlib.AbstractContextManager[Writer],
    outcomes: Sequence[Outcome],
    at: int,
    new_holds: Sequence[Hold],
    never_stored: AbstractSet[str] = frozenset(),
) -> Generator[None, None, int]:
    """The settlement batch's writes, yielding between slices (``resolve`` runs them through):
    the requests concerned looked up ``SELECT_IDS`` at a time (except ``never_stored``: in neither
    table, the caller knows), then ``STEP_SETTLEMENTS``
    settlements per slice — usage records, and the removal of their holds stored open — and last
    the journaled holds still open and the ledger, all through the driver (``Writer``). The
    holds table keeps open holds only: one placed and settled within one batch is never stored."""
    with writer as db:
        return (yield from _write_batch(db, outcomes, at, new_holds, never_stored))


def _write_batch(
    db: Writer,
    outcomes: Sequence[Outcome],
    at: int,
    new_holds: Sequence[Hold],
    never_stored: AbstractSet[str],
) -> Generator[None, None, int]:
    # The ids gathered a chunk at a time too: all at once took ~0.15 ms at 500 on this VM.
    # (Looking up every id was ~8,000 of a settlement's ~61,000 instructions, bench/RESULTS.md;
    # with a flush's own holds never stored, nearly none are looked up.)
    status: dict[str, str] = {}
    seen: set[str] = set()
    chunk: list[str] = []
    for rid in chain((h.id for h in new_holds), (o.record.request_id for o in outcomes)):
        if rid not in seen and rid not in never_stored:
            seen.add(rid)
            chunk.append(rid)
            if len(chunk) == SELECT_IDS:
                status.update(db.statuses(padded(chunk)))
                chunk = []
                yield
    if chunk:
        status.update(db.statuses(padded(chunk)))
        yield
    # Journaled holds not stored yet are stored open, unless resolved in this batch: the holds
    # table holds open holds only; a resolved request is its usage record (and the ledger).
    journaled: dict[str, Hold] = {h.id: h for h in new_holds if h.id not in status}
    todo: dict[str, Outcome] = {}
    ledger = _Ledger()
    for start in range(0, len(outcomes), STEP_SETTLEMENTS):
        stored_open: list[tuple[str]] = []
        usage: list[tuple[Any, ...]] = []
        for outcome in outcomes[start : start + STEP_SETTLEMENTS]:
            rid = outcome.record.request_id
            known = status.get(rid)
            # Skipped whole: resolved already (sweeper, replayed batch), or voided before its
            # hold was ever stored.
            if rid in todo or known == "resolved" or (known is None and outcome.settlement is None):
                continue
            todo[rid] = outcome
            ledger.add(outcome)
            if known == "open":
                stored_open.append((rid,))
            else:
                journaled.pop(rid, None)
            usage.append(_usage_tuple(outcome.record, db.sqlite))
        yield
        db.resolve_open(stored_open)
        db.insert("usage_records", _USAGE_COLUMNS, usage)
    still_open = [hold_row(h) for h in journaled.values()]
    for start in range(0, len(still_open), STEP_SETTLEMENTS):
        yield
        db.insert("holds", HOLD_COLUMNS, still_open[start : start + STEP_SETTLEMENTS])
    yield  # (the ledger and the totals: a step of their own)
    db.insert("ledger_entries", _LEDGER_COLUMNS, ledger.rows(at))
    db.add("ledger_balances", ledger.balances())
    db.add("spend_totals", ledger.spend)
    return len(todo)


def hold_row(h: Hold) -> tuple[Any, ...]:
    """``h``'s row, in the order of ``HOLD_COLUMNS``."""
    return (
        h.id, h.org_id, h.project_id, h.amount, h.period, h.created_at, h.expires_at, h.key_id,
        h.model, h.endpoint, "open",
    )  # fmt: skip


def padded(ids: list[str]) -> list[str]:
    """``ids`` repeated up to a power of two: each distinct ``IN (?, …)`` length is a statement
    the driver compiles and caches per connection, and batch sizes vary, so unpadded lists kept
    up to 128 large prepared statements per connection alive (tens of MB of the process's RSS)."""
    size = 16
    while size < len(ids):
        size *= 2
    return ids + ids[:1] * (size - len(ids)) if ids else ids
