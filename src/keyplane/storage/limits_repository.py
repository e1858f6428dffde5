"""SQL implementation of the RateLimitStore port."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, insert, select

from keyplane.keys.access import NO_POLICY, AccessPolicy
from keyplane.limits.ratelimit import ModelLimits
from keyplane.storage.billing_tables import money_events
from keyplane.storage.limits_tables import access_policies, key_rate_limits, project_rate_limits
from keyplane.storage.store import SqlStore, append_to_feed

_DIMENSIONS = ("rpm", "tpm", "rpd", "images_per_min", "audio_mb_per_min")


def _limits(row: Any) -> ModelLimits:
    return ModelLimits(**{d: getattr(row, d) for d in _DIMENSIONS})


def _values(limits: ModelLimits) -> dict[str, int | None]:
    return {d: getattr(limits, d) for d in _DIMENSIONS}


class SqlRateLimitStore(SqlStore):
    def project_limits(self, project_id: str) -> Mapping[str, ModelLimits]:
        rows = self._read(
            lambda c: c.execute(
                select(project_rate_limits).where(project_rate_limits.c.project_id == project_id)
            ).all()
        )
        return {r.model: _limits(r) for r in rows}

    def key_limits(self, key_id: str) -> ModelLimits | None:
        row = self._read(
            lambda c: c.execute(
                select(key_rate_limits).where(key_rate_limits.c.key_id == key_id)
            ).first()
        )
        return None if row is None else _limits(row)

    def save_project_limits(
        self, org_id: str, project_id: str, model: str, limits: ModelLimits, at: int
    ) -> None:
        with self._write() as conn:
            conn.execute(
                delete(project_rate_limits).where(
                    project_rate_limits.c.project_id == project_id,
                    project_rate_limits.c.model == model,
                )
            )
            conn.execute(
                insert(project_rate_limits).values(
                    project_id=project_id,
                    model=model,
                    org_id=org_id,
                    updated_at=at,
                    **_values(limits),
                )
            )
            append_to_feed(
                conn, money_events, org_id=org_id, kind="rate_limits", ref=project_id, at=at
            )

    def save_key_limits(
        self, org_id: str, key_id: str, limits: ModelLimits | None, at: int
    ) -> None:
        with self._write() as conn:
            conn.execute(delete(key_rate_limits).where(key_rate_limits.c.key_id == key_id))
            if limits is not None:
                conn.execute(
                    insert(key_rate_limits).values(
                        key_id=key_id, org_id=org_id, updated_at=at, **_values(limits)
                    )
                )
            append_to_feed(conn, money_events, org_id=org_id, kind="rate_limits", ref=key_id, at=at)


class SqlAccessPolicyStore(SqlStore):
    def policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        row = self._read(
            lambda c: c.execute(
                select(access_policies).where(
                    access_policies.c.scope_type == scope_type,
                    access_policies.c.scope_id == scope_id,
                )
            ).first()
        )
        if row is None:
            return NO_POLICY
        return AccessPolicy(_tuple(row.allowed_models), _tuple(row.allowed_cidrs))

    def save_policy(
        self, org_id: str, scope_type: str, scope_id: str, policy: AccessPolicy, at: int
    ) -> None:
        with self._write() as conn:
            conn.execute(
                delete(access_policies).where(
                    access_policies.c.scope_type == scope_type,
                    access_policies.c.scope_id == scope_id,
                )
            )
            conn.execute(
                insert(access_policies).values(
                    scope_type=scope_type, scope_id=scope_id, org_id=org_id, updated_at=at,
                    allowed_models=_json(policy.allowed_models), allowed_cidrs=_json(policy.allowed_cidrs),
                )
            )  # fmt: skip
            append_to_feed(conn, money_events, org_id=org_id, kind="access", ref=scope_id, at=at)


def _json(values: tuple[str, ...] | None) -> str | None:
    return None if values is None else json.dumps(list(values))


def _tuple(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))
