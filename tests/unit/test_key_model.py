"""What a key's record says of it at a given time: the status the CLI shows, and whether it is
flagged for rotation."""

from __future__ import annotations

import dataclasses

from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey

DAY = 86400
KEY = ApiKey(
    id="key_x", kind=KeyKind.PROJECT, org_id="org_x", project_id="proj_x", owner_type="user",
    owner_id="user_x", name="k", secret_hash="h", redacted_value="sk-kp-proj-…abcd", created_at=0,
    created_by=None,
)  # fmt: skip


def test_status_and_rotation_flag_follow_the_keys_life() -> None:
    expiring = dataclasses.replace(KEY, expires_at=200 * DAY)
    revoked = dataclasses.replace(KEY, revoked_at=DAY)
    assert [k.status(100 * DAY) for k in (KEY, expiring, revoked)] == ["active"] * 2 + ["revoked"]
    assert expiring.status(200 * DAY) == "expired"
    assert not KEY.needs_rotation(90 * DAY - 1, 90 * DAY) and KEY.needs_rotation(90 * DAY, 90 * DAY)
    # A key that no longer works needs no rotation: it needs replacing, or nothing.
    assert expiring.needs_rotation(199 * DAY, 90 * DAY)
    assert not expiring.needs_rotation(200 * DAY, 90 * DAY)
    assert not revoked.needs_rotation(100 * DAY, 90 * DAY)
