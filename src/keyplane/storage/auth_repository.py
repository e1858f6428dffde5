"""SqlAuthStore: users, single-use tokens, web sessions, failed sign-ins and two-factor settings on
SQLite or PostgreSQL. Each method is one short transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, RowMapping, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from keyplane.accounts.auth_ports import (
    AttemptReservation,
    Membership,
    OneTimeToken,
    SecondFactor,
    TokenPurpose,
    WebSession,
)
from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.errors import Conflict
from keyplane.storage import tables as t
from keyplane.storage.auth_tables import (
    auth_tokens,
    login_failures,
    recovery_codes,
    user_second_factors,
    web_sessions,
)
from keyplane.storage.store import SqlStore


def _user(row: RowMapping) -> User:
    return User(**row)


def _token(row: RowMapping) -> OneTimeToken:
    return OneTimeToken(**{**row, "purpose": TokenPurpose(row["purpose"])})


def _lock_key(subject: str) -> int:
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big", signed=True)


class SqlAuthStore(SqlStore):
    # -- users ----------------------------------------------------------------------------------
    def user(self, user_id: str) -> User | None:
        row = self._read(
            lambda c: c.execute(select(t.users).where(t.users.c.id == user_id)).mappings().first()
        )
        return None if row is None else _user(row)

    def user_by_email(self, email: str) -> User | None:
        row = self._read(
            lambda c: c.execute(select(t.users).where(t.users.c.email == email)).mappings().first()
        )
        return None if row is None else _user(row)

    def add_user(self, user: User) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(t.users).values(**{f: getattr(user, f) for f in User.__slots__})
                )
        except IntegrityError:
            raise Conflict("An account with this email address already exists.") from None

    def mark_email_verified(self, user_id: str, at: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.users)
                .where(t.users.c.id == user_id, t.users.c.email_verified_at.is_(None))
                .values(email_verified_at=at)
            )

    def set_password(self, user_id: str, password_hash: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash)
            )

    def set_name(self, user_id: str, name: str) -> None:
        with self._write() as conn:
            conn.execute(update(t.users).where(t.users.c.id == user_id).values(name=name))

    def memberships(self, user_id: str) -> Sequence[Membership]:
        query = (
            select(t.organizations, t.org_members.c.role)
            .join(t.org_members, t.org_members.c.org_id == t.organizations.c.id)
            .where(t.org_members.c.user_id == user_id)
            .order_by(t.org_members.c.created_at, t.organizations.c.id)
        )
        rows = self._read(lambda c: c.execute(query).mappings().all())
        return [
            Membership(
                Organization(id=r["id"], name=r["name"], created_at=r["created_at"]),
                OrgRole(r["role"]),
            )
            for r in rows
        ]

    def add_organization(self, owner_id: str, org: Organization, project: Project) -> None:
        with self._write() as conn:
            conn.execute(
                insert(t.organizations).values(id=org.id, name=org.name, created_at=org.created_at)
            )
            conn.execute(
                insert(t.org_members).values(
                    org_id=org.id,
                    user_id=owner_id,
                    role=OrgRole.OWNER.value,
                    created_at=org.created_at,
                )
            )
            conn.execute(
                insert(t.projects).values(**{f: getattr(project, f) for f in Project.__slots__})
            )

    # -- single-use tokens ------------------------------------------------------------------
    def add_token(self, token: OneTimeToken, *, supersede: bool = False) -> None:
        with self._write() as conn:
            if supersede:
                conn.execute(
                    update(auth_tokens)
                    .where(
                        auth_tokens.c.user_id == token.user_id,
                        auth_tokens.c.purpose == token.purpose.value,
                        auth_tokens.c.used_at.is_(None),
                    )
                    .values(used_at=token.created_at)
                )
            conn.execute(
                insert(auth_tokens).values(
                    token_hash=token.token_hash,
                    purpose=token.purpose.value,
                    user_id=token.user_id,
                    created_at=token.created_at,
                    expires_at=token.expires_at,
                    used_at=token.used_at,
                )
            )

    def use_token(self, purpose: TokenPurpose, token_hash: str, at: int) -> OneTimeToken | None:
        where = (auth_tokens.c.token_hash == token_hash, auth_tokens.c.purpose == purpose.value)
        with self._write() as conn:
            # The conditional UPDATE decides: of two requests racing with one token, one hits.
            hit = conn.execute(
                update(auth_tokens)
                .where(*where, auth_tokens.c.used_at.is_(None), auth_tokens.c.expires_at > at)
                .values(used_at=at)
            ).rowcount
            if not hit:
                return None
            row = conn.execute(select(auth_tokens).where(*where)).mappings().one()
        return _token(row)

    def token(self, purpose: TokenPurpose, token_hash: str) -> OneTimeToken | None:
        row = self._read(
            lambda c: (
                c.execute(
                    select(auth_tokens).where(
                        auth_tokens.c.token_hash == token_hash,
                        auth_tokens.c.purpose == purpose.value,
                    )
                )
                .mappings()
                .first()
            )
        )
        return None if row is None else _token(row)

    def latest_token_at(self, user_id: str, purpose: TokenPurpose) -> int | None:
        def read(c: Connection) -> int | None:
            value = c.execute(
                select(func.max(auth_tokens.c.created_at)).where(
                    auth_tokens.c.user_id == user_id, auth_tokens.c.purpose == purpose.value
                )
            ).scalar()
            return None if value is None else int(value)

        return self._read(read)

    # -- web sessions -----------------------------------------------------------------------
    def add_session(self, session: WebSession) -> None:
        with self._write() as conn:
            # Sessions past their absolute end are dead weight; drop them as new ones arrive.
            conn.execute(
                delete(web_sessions).where(web_sessions.c.expires_at <= session.created_at)
            )
            conn.execute(
                insert(web_sessions).values(
                    **{f: getattr(session, f) for f in WebSession.__slots__}
                )
            )

    def session(self, id_hash: str) -> WebSession | None:
        row = self._read(
            lambda c: (
                c.execute(select(web_sessions).where(web_sessions.c.id_hash == id_hash))
                .mappings()
                .first()
            )
        )
        return None if row is None else WebSession(**row)

    def touch_session(self, id_hash: str, at: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(web_sessions)
                .where(web_sessions.c.id_hash == id_hash, web_sessions.c.last_seen_at < at)
                .values(last_seen_at=at)
            )

    def delete_session(self, id_hash: str) -> None:
        with self._write() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == id_hash))

    def delete_user_sessions(self, user_id: str) -> int:
        with self._write() as conn:
            return int(
                conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id)).rowcount
            )

    # -- failed sign-ins --------------------------------------------------------------------
    def reserve_attempt(
        self, limits: Mapping[str, int], *, since: int, at: int, purge_before: int | None = None
    ) -> AttemptReservation:
        f = login_failures
        # Its own transaction even inside a unit of work: the attempt counts whether or not what
        # it guards (turning two-factor off, say) is undone.
        with self._write_alone() as conn:
            if conn.dialect.name == "postgresql":
                # Serialize attempts per subject (in a fixed order, so two never deadlock);
                # SQLite already runs one writer at a time.
                for subject in sorted(limits):
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(subject)}
                    )
            purge = since if purge_before is None else min(since, purge_before)
            conn.execute(delete(f).where(f.c.at <= purge))
            for subject, limit in limits.items():
                times = conn.execute(
                    select(f.c.at).where(f.c.subject == subject, f.c.at > since).order_by(f.c.at)
                ).scalars()
                failures = tuple(int(x) for x in times)
                if len(failures) >= limit:
                    return AttemptReservation(blocked=subject, blocked_failures=failures)
            ids = []
            for subject in limits:
                key = conn.execute(insert(f).values(subject=subject, at=at)).inserted_primary_key
                assert key is not None
                ids.append(int(key[0]))
        return AttemptReservation(ids=tuple(ids))

    def forgive_attempt(self, ids: Sequence[int]) -> None:
        if ids:
            with self._write() as conn:
                conn.execute(delete(login_failures).where(login_failures.c.id.in_(list(ids))))

    def forget_failures(self, subject: str) -> None:
        with self._write() as conn:
            conn.execute(delete(login_failures).where(login_failures.c.subject == subject))

    # -- two-factor -------------------------------------------------------------------------
    def second_factor(self, user_id: str) -> SecondFactor | None:
        def read(c: Connection) -> SecondFactor | None:
            row = (
                c.execute(
                    select(user_second_factors).where(user_second_factors.c.user_id == user_id)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            left = c.execute(
                select(func.count())
                .select_from(recovery_codes)
                .where(recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None))
            ).scalar()
            return SecondFactor(
                sealed_secret=row["sealed_secret"],
                last_step=row["last_step"],
                enabled_at=row["enabled_at"],
                recovery_codes_left=int(left or 0),
            )

        return self._read(read)

    def enable_second_factor(
        self, user_id: str, sealed_secret: str, step: int, recovery_hashes: Sequence[str], at: int
    ) -> bool:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(user_second_factors).values(
                        user_id=user_id, sealed_secret=sealed_secret, last_step=step, enabled_at=at
                    )
                )
                self._insert_codes(conn, user_id, recovery_hashes)
        except IntegrityError:  # on already (the user id is the table's key)
            return False
        return True

    def disable_second_factor(self, user_id: str) -> None:
        with self._write() as conn:
            self._drop_second_factor(conn, user_id)

    def use_totp_step(self, user_id: str, step: int) -> bool:
        s = user_second_factors
        with self._write() as conn:
            hit = conn.execute(
                update(s)
                .where(s.c.user_id == user_id, or_(s.c.last_step.is_(None), s.c.last_step < step))
                .values(last_step=step)
            ).rowcount
        return bool(hit)

    def use_recovery_code(self, user_id: str, code_hash: str, at: int) -> bool:
        r = recovery_codes
        with self._write() as conn:
            hit = conn.execute(
                update(r)
                .where(r.c.user_id == user_id, r.c.code_hash == code_hash, r.c.used_at.is_(None))
                .values(used_at=at)
            ).rowcount
        return bool(hit)

    def recovery_code_used(self, user_id: str, code_hash: str) -> bool:
        r = recovery_codes
        query = select(r.c.used_at).where(r.c.user_id == user_id, r.c.code_hash == code_hash)
        used_at = self._read(lambda c: c.execute(query).scalar())
        return used_at is not None

    def replace_recovery_codes(self, user_id: str, code_hashes: Sequence[str]) -> None:
        with self._write() as conn:
            conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
            self._insert_codes(conn, user_id, code_hashes)

    @staticmethod
    def _drop_second_factor(conn: Connection, user_id: str) -> None:
        conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
        conn.execute(delete(user_second_factors).where(user_second_factors.c.user_id == user_id))

    @staticmethod
    def _insert_codes(conn: Connection, user_id: str, code_hashes: Sequence[str]) -> None:
        if code_hashes:
            conn.execute(
                insert(recovery_codes),
                [{"user_id": user_id, "code_hash": h, "used_at": None} for h in code_hashes],
            )
