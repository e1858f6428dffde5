"""Organization verification ("Start verification" in OpenAI's guide, BRIEF C1): an Owner asks
for it with the organization's legal name and website; an operator approves or rejects it. An
operator can require it before any API key is created (setting ``require_org_verification``,
off by default)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from keyplane.errors import InvalidRequest
from keyplane.text import refuse_control_characters


class VerificationStatus(enum.StrEnum):
    UNVERIFIED = "unverified"
    PENDING = "pending"
    VERIFIED = "verified"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class OrgVerification:
    org_id: str
    status: VerificationStatus
    legal_name: str = ""
    website: str = ""
    requested_at: int | None = None
    requested_by: str | None = None
    decided_at: int | None = None
    note: str = ""


class VerificationStore(Protocol):
    def get(self, org_id: str) -> OrgVerification | None:
        """Returns the organization's verification record, if one was ever started."""
        ...

    def save(self, verification: OrgVerification) -> None: ...


class OrgVerificationService:
    def __init__(
        self, store: VerificationStore, now: Callable[[], float], *, required: bool
    ) -> None:
        self._store = store
        self._now = now
        self.required = required

    def status(self, org_id: str) -> OrgVerification:
        return self._store.get(org_id) or OrgVerification(org_id, VerificationStatus.UNVERIFIED)

    def start(self, org_id: str, user_id: str, *, legal_name: str, website: str) -> OrgVerification:
        """An Owner asks for verification. Raises InvalidRequest on bad input or when verified."""
        legal_name, website = legal_name.strip(), website.strip()
        if not 2 <= len(legal_name) <= 200:
            raise InvalidRequest(
                "Enter the organization's legal name (2 to 200 characters).", param="legal_name"
            )
        if (website and not website.startswith(("https://", "http://"))) or len(website) > 300:
            raise InvalidRequest("A website starts with https:// or http://.", param="website")
        refuse_control_characters(legal_name, "A legal name", "legal_name")
        refuse_control_characters(website, "A website", "website")
        if self.status(org_id).status is VerificationStatus.VERIFIED:
            raise InvalidRequest("This organization is already verified.")
        record = OrgVerification(
            org_id, VerificationStatus.PENDING, legal_name, website, int(self._now()), user_id
        )
        self._store.save(record)
        return record

    def decide(self, org_id: str, *, approve: bool, note: str = "") -> OrgVerification:
        """The operator's decision (CLI)."""
        current = self.status(org_id)
        status = VerificationStatus.VERIFIED if approve else VerificationStatus.REJECTED
        record = OrgVerification(
            org_id, status, current.legal_name, current.website, current.requested_at,
            current.requested_by, int(self._now()), note[:500],
        )  # fmt: skip
        self._store.save(record)
        return record

    def require_verified(self, org_id: str) -> None:
        """Raises InvalidRequest when verification is required and this organization lacks it."""
        if self.required and self.status(org_id).status is not VerificationStatus.VERIFIED:
            raise InvalidRequest(
                "Your organization must be verified before it can create API keys: an Owner starts "
                "verification (POST /v1/organization/verification), then an operator approves it."
            )
