"""Writes that happen at most once, each guarded by a unique key (part of SqlMoneyStore):
Idempotency-Key claims, whose stored response answers a retried request, and auto-recharge jobs,
one pending per organization."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.billing.ports import STALE_CLAIM_S, Claim, ClaimLost, Done
from keyplane.errors import IdempotencyKeyReused
from keyplane.storage.billing_tables import idempotency_keys, recharge_jobs
from keyplane.storage.store import SqlStore


def complete_claim(conn: Connection, done: Done | None) -> None:
    """Stores ``done``'s response with its key, in the caller's transaction; raises ClaimLost
    (rolling it back) when the claim is no longer that run's."""
    if done is None:
        return
    claim = done.claim
    stored = conn.execute(
        update(idempotency_keys)
        .where(
            idempotency_keys.c.scope == claim.scope,
            idempotency_keys.c.key == claim.key,
            idempotency_keys.c.created_at == claim.claimed_at,
            idempotency_keys.c.response == "",
        )
        .values(response=done.response)
    ).rowcount
    if stored != 1:
        raise ClaimLost(claim.scope)


class SqlIdempotency(SqlStore):
    def claim_idempotency(self, claim: Claim) -> str | None:
        keyed = (idempotency_keys.c.scope == claim.scope, idempotency_keys.c.key == claim.key)
        try:
            with self._write() as conn:
                conn.execute(
                    insert(idempotency_keys).values(
                        scope=claim.scope, key=claim.key, request_hash=claim.request_hash,
                        response="", created_at=claim.claimed_at,
                    )
                )  # fmt: skip
            return None
        except IntegrityError:
            pass
        row = self._read(lambda c: c.execute(select(idempotency_keys).where(*keyed)).first())
        if row is None:  # released between our insert and this read: the client may retry
            raise IdempotencyKeyReused("A request with this Idempotency-Key just failed; retry it.")
        if row.request_hash != claim.request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with different parameters."
            )
        if row.response:
            return str(row.response)
        if row.created_at <= claim.claimed_at - STALE_CLAIM_S:
            # Its run died before its write: this request takes the claim over (one only).
            with self._write() as conn:
                taken = conn.execute(
                    update(idempotency_keys)
                    .where(*keyed, idempotency_keys.c.response == "")
                    .where(idempotency_keys.c.created_at == row.created_at)
                    .values(created_at=claim.claimed_at)
                ).rowcount
            if taken == 1:
                return None
        raise IdempotencyKeyReused(
            "A request with this Idempotency-Key is still in progress; retry shortly."
        )

    def release_idempotency(self, claim: Claim) -> None:
        with self._write() as conn:
            conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.scope == claim.scope,
                    idempotency_keys.c.key == claim.key,
                    idempotency_keys.c.created_at == claim.claimed_at,
                    idempotency_keys.c.response == "",
                )
            )

    def enqueue_recharge(
        self, job_id: str, org_id: str, target: int, at: int, due_at: int | None = None
    ) -> bool:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(recharge_jobs).values(
                        id=job_id, org_id=org_id, pending_org_id=org_id, target_micro=target,
                        status="pending", created_at=at, due_at=due_at,
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True
