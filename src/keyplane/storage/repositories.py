"""SQL implementations of the domain ports. Each method is one short transaction."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    RowMapping,
    Select,
    Table,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError

from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.errors import Conflict, StoreUnavailable
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.storage import tables as t
from keyplane.usage.records import DailyUsage, Outcome, UsageBucket, UsageRecord

DAY_S = 86400

T = TypeVar("T")


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
# Write locks held across event-loop steps (billing_repository's resolve_stepwise) → the thread.
_STEPPING: dict[threading.Lock, int] = {}


def _write_lock(engine: Engine) -> threading.Lock | None:
    """SQLite has one writer at a time; threads of this process take turns on a lock instead of
    meeting SQLITE_BUSY, whose busy handler sleeps in steps of up to 100 ms. PostgreSQL needs none."""
    if engine.dialect.name != "sqlite":
        return None
    with _LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(engine, threading.Lock())


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite_lock = _write_lock(engine)
        self._lock: contextlib.AbstractContextManager[object] = (
            self._sqlite_lock or contextlib.nullcontext()
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if (
            self._sqlite_lock is not None
            and _STEPPING.get(self._sqlite_lock) == threading.get_ident()
        ):
            # This thread holds the lock in a stepwise batch it yielded from: waiting would hang.
            raise RuntimeError("a blocking write on the event loop during a stepwise batch")
        try:
            with self._lock, self._engine.begin() as conn:
                yield conn
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc

    def _lock_for_steps(self) -> bool:
        """Takes the SQLite write lock if it is free right now, to hold across event-loop steps
        (False: taken, or not SQLite); ``_unlock_steps`` gives it back."""
        lock = self._sqlite_lock
        if lock is None or not lock.acquire(blocking=False):
            return False
        _STEPPING[lock] = threading.get_ident()
        return True

    def _unlock_steps(self) -> None:
        assert self._sqlite_lock is not None
        _STEPPING.pop(self._sqlite_lock, None)
        self._sqlite_lock.release()

    def _claim(
        self, query: Select[Any], table: Table, due: ColumnElement[bool], **lease: Any
    ) -> list[Row[Any]]:
        """The rows of ``query`` (over ``table``, filtered by ``due``) that this call leases: each
        by an update under the same ``due``, so another claimer's lease taken between the select
        and the update leaves the row to it. A read first: the background loops that claim look
        every few seconds and nearly always find nothing, and a write transaction each time would
        take SQLite's write lock for nothing."""
        if not self._read(lambda c: c.execute(select(table.c.id).where(due).limit(1)).first()):
            return []
        with self._write() as conn:
            return [
                row
                for row in conn.execute(query).all()
                if conn.execute(
                    update(table).where(due, table.c.id == row.id).values(**lease)
                ).rowcount
                == 1
            ]

    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with (
                self._engine.connect().execution_options(readonly=True) as conn,
                conn.begin(),
            ):
                return fn(conn)
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc


_JSON_FIELDS = ("scopes", "allowed_models", "allowed_cidrs")


# Ids many keys share: one string each in memory, not one per key (the gateway caches up to a
# million keys; these were a third of each entry's ~1 KB, bench/keys.py).
_SHARED_FIELDS = ("org_id", "project_id", "owner_type", "owner_id", "created_by")


def _key(row: RowMapping) -> ApiKey:
    values = dict(row)
    values["kind"] = KeyKind(values["kind"])
    for name in _SHARED_FIELDS:
        if isinstance(values.get(name), str):
            values[name] = sys.intern(values[name])
    for name in _JSON_FIELDS:
        if values[name] is not None:
            values[name] = tuple(json.loads(values[name]))
    return ApiKey(**values)


def _key_row(key: ApiKey) -> dict[str, Any]:
    values = _fields(key)
    values["kind"] = key.kind.value
    for name in _JSON_FIELDS:
        if values[name] is not None:
            values[name] = json.dumps(list(values[name]))
    return values


class SqlKeyStore(SqlStore):
    def get(self, key_id: str) -> ApiKey | None:
        row = self._read(
            lambda c: (
                c.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).mappings().first()
            )
        )
        return None if row is None else _key(row)

    def add(self, key: ApiKey) -> None:
        with self._write() as conn:
            conn.execute(insert(t.api_keys).values(**_key_row(key)))
            conn.execute(insert(t.key_events).values(key_id=key.id, at=key.created_at))

    def list(self, org_id: str, project_id: str | None = None) -> Sequence[ApiKey]:
        query = select(t.api_keys).where(t.api_keys.c.org_id == org_id)
        if project_id is not None:
            query = query.where(t.api_keys.c.project_id == project_id)
        query = query.order_by(t.api_keys.c.created_at.desc(), t.api_keys.c.id)
        return [_key(r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def revoke(self, key_id: str, at: int) -> bool:
        with self._write() as conn:
            done = conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            ).rowcount
            if done:
                conn.execute(insert(t.key_events).values(key_id=key_id, at=at))
        return bool(done)

    def update(self, key: ApiKey, at: int) -> None:
        """Stores a key's changed settings (expiry, permissions, allowlists) and announces it."""
        values = _key_row(key)
        with self._write() as conn:
            conn.execute(update(t.api_keys).where(t.api_keys.c.id == key.id).values(**values))
            conn.execute(insert(t.key_events).values(key_id=key.id, at=at))

    def changes_since(self, seq: int | None) -> tuple[int, Sequence[str]]:
        def read(c: Connection) -> tuple[int, Sequence[str]]:
            if seq is not None:
                rows = c.execute(
                    select(t.key_events.c.seq, t.key_events.c.key_id)
                    .where(t.key_events.c.seq > seq)
                    .order_by(t.key_events.c.seq)
                ).all()
                if rows:
                    return rows[-1][0], [r[1] for r in rows]
            latest = c.execute(select(func.max(t.key_events.c.seq))).scalar() or 0
            return (latest if seq is None else min(seq, latest)), []

        return self._read(read)

    def record_use(self, uses: Mapping[str, tuple[int, str | None]]) -> None:
        if not uses:
            return
        with self._write() as conn:
            for key_id, (at, ip) in uses.items():
                conn.execute(
                    update(t.api_keys)
                    .where(t.api_keys.c.id == key_id)
                    .values(last_used_at=at, last_used_ip=ip)
                )


class SqlAccountStore(SqlStore):
    def add_owner_setup(self, user: User, org: Organization, project: Project) -> None:
        try:
            with self._write() as conn:
                conn.execute(insert(t.users).values(**_fields(user)))
                conn.execute(insert(t.organizations).values(**_fields(org)))
                conn.execute(
                    insert(t.org_members).values(
                        org_id=org.id,
                        user_id=user.id,
                        role=OrgRole.OWNER.value,
                        created_at=org.created_at,
                    )
                )
                conn.execute(insert(t.projects).values(**_fields(project)))
        except IntegrityError:
            raise Conflict(f"A user with email '{user.email}' already exists.") from None

    def count_users(self) -> int:
        return int(
            self._read(lambda c: c.execute(select(func.count()).select_from(t.users)).scalar() or 0)
        )

    def organizations(self) -> Sequence[Organization]:
        rows = self._read(
            lambda c: (
                c.execute(select(t.organizations).order_by(t.organizations.c.created_at))
                .mappings()
                .all()
            )
        )
        return [Organization(**r) for r in rows]

    def owners(self, org_id: str) -> Sequence[User]:
        query = (
            select(t.users)
            .join(t.org_members, t.org_members.c.user_id == t.users.c.id)
            .where(t.org_members.c.org_id == org_id, t.org_members.c.role == OrgRole.OWNER.value)
            .order_by(t.users.c.created_at)
        )
        return [User(**r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def member_role(self, org_id: str, user_id: str) -> OrgRole | None:
        role = self._read(
            lambda c: c.execute(
                select(t.org_members.c.role).where(
                    t.org_members.c.org_id == org_id, t.org_members.c.user_id == user_id
                )
            ).scalar()
        )
        return None if role is None else OrgRole(role)

    def projects(self, org_id: str) -> Sequence[Project]:
        query = (
            select(t.projects)
            .where(t.projects.c.org_id == org_id)
            .order_by(t.projects.c.created_at)
        )
        return [Project(**r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def add_project(self, project: Project) -> None:
        try:
            with self._write() as conn:
                conn.execute(insert(t.projects).values(**_fields(project)))
        except IntegrityError:
            raise Conflict(
                f"A project named '{project.name}' already exists.", param="name"
            ) from None


class SqlUsageStore(SqlStore):
    def query(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> Sequence[UsageRecord]:
        u = t.usage_records
        query = _usage_where(select(u), org_id, project_id, since, until)
        query = query.order_by(u.c.created_at.desc(), u.c.request_id.desc()).limit(limit)
        rows = self._read(lambda c: c.execute(query).mappings().all())
        return [_usage_record(r) for r in reversed(rows)]

    def summary(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        u = t.usage_records
        query = _usage_where(
            select(func.count(), func.coalesce(func.sum(u.c.cost_micro_usd), 0)), org_id,
            project_id, since, until,
        )  # fmt: skip
        count, cost = self._read(lambda c: c.execute(query).one())
        return int(count), int(cost)

    def records(
        self, org_id: str, *, start: int, end: int, project_id: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[UsageRecord]:  # fmt: skip
        u = t.usage_records
        first = _usage_where(select(u), org_id, project_id, start, end)
        first = first.order_by(u.c.created_at, u.c.request_id).limit(page_size)
        query = first
        while True:
            page = self._read(functools.partial(_mappings, query))
            for row in page:
                yield _usage_record(row)
            if len(page) < page_size:
                return
            # Keyset pagination: after the last (time, id) seen, not OFFSET (which rereads every
            # row skipped, and shifts when records of the month are written meanwhile).
            at, last = page[-1]["created_at"], page[-1]["request_id"]
            query = first.where(
                or_(u.c.created_at > at, and_(u.c.created_at == at, u.c.request_id > last))
            )

    def daily(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> Sequence[DailyUsage]:  # fmt: skip
        u = t.usage_records
        day = (u.c.created_at // DAY_S).label("day")
        query = _usage_where(
            select(
                day, u.c.model, func.count(), func.sum(u.c.input_tokens),
                func.sum(u.c.output_tokens), func.sum(u.c.cost_micro_usd), func.sum(u.c.images),
                func.sum(u.c.audio_seconds), func.sum(u.c.characters),
            ),
            org_id, project_id, since, until,
        ).group_by(day, u.c.model).order_by(day, u.c.model)  # fmt: skip
        rows = self._read(lambda c: c.execute(query).all())
        return [
            DailyUsage(int(d), m, int(n), int(i), int(o), int(c), int(im), int(s), int(ch))
            for d, m, n, i, o, c, im, s, ch in rows
        ]

    def buckets(
        self, org_id: str, *, start: int, end: int, width_s: int, endpoints: Sequence[str] = (),
        group_by: Sequence[str] = (), project_ids: Sequence[str] = (),
        key_ids: Sequence[str] = (), models: Sequence[str] = (), owner_ids: Sequence[str] = (),
    ) -> Sequence[UsageBucket]:  # fmt: skip
        u = t.usage_records
        bucket = ((u.c.created_at - start) // width_s).label("bucket")
        grouped = {
            "project_id": u.c.project_id, "model": u.c.model, "key_id": u.c.key_id,
            "owner_id": u.c.owner_id,
        }  # fmt: skip
        keys = [grouped[name] for name in group_by]
        query = select(
            bucket, *keys, func.count(), func.sum(u.c.input_tokens),
            func.sum(u.c.cached_input_tokens), func.sum(u.c.output_tokens),
            func.sum(u.c.cost_micro_usd), func.sum(u.c.images), func.sum(u.c.audio_seconds),
            func.sum(u.c.characters),
        ).where(u.c.org_id == org_id, u.c.created_at >= start, u.c.created_at < end)  # fmt: skip
        for column, wanted in (
            (u.c.endpoint, endpoints), (u.c.project_id, project_ids), (u.c.key_id, key_ids),
            (u.c.model, models), (u.c.owner_id, owner_ids),
        ):  # fmt: skip
            if wanted:
                query = query.where(column.in_(list(wanted)))
        query = query.group_by(bucket, *keys).order_by(bucket, *keys)
        out = []
        for row in self._read(lambda c: c.execute(query).all()):
            values = dict(zip(group_by, row[1 : 1 + len(keys)], strict=True))
            n, i, ci, o, cost, images, seconds, chars = (int(v) for v in row[1 + len(keys) :])
            project, model, key, owner = (
                values.get(k) for k in ("project_id", "model", "key_id", "owner_id")
            )
            first = start + int(row[0]) * width_s
            out.append(
                UsageBucket(
                    first, project, model, key, n, i, ci, o, cost, owner, images, seconds, chars
                )
            )
        return out


def _usage_where(
    query: Select[Any], org_id: str, project_id: str | None, since: int | None,
    until: int | None = None,
) -> Select[Any]:  # fmt: skip
    u = t.usage_records
    query = query.where(u.c.org_id == org_id)
    if project_id is not None:
        query = query.where(u.c.project_id == project_id)
    if since is not None:
        query = query.where(u.c.created_at >= since)
    if until is not None:
        query = query.where(u.c.created_at < until)
    return query


def _mappings(query: Select[Any], conn: Connection) -> Sequence[RowMapping]:
    return conn.execute(query).mappings().all()


def _usage_record(row: RowMapping) -> UsageRecord:
    return UsageRecord(**{**row, "outcome": Outcome(row["outcome"])})


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields (``dataclasses.fields``, not ``__slots__``: a class compiled
    by mypyc has none)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
