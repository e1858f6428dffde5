"""Account records as plain data."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OrgRole(enum.StrEnum):
    OWNER = "owner"
    READER = "reader"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str
    password_hash: str
    created_at: int
    email_verified_at: int | None = None


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    org_id: str
    name: str
    created_at: int
    archived_at: int | None = None

    @property
    def status(self) -> str:
        return "archived" if self.archived_at is not None else "active"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    id: str
    org_id: str
    project_id: str
    name: str
    created_at: int
