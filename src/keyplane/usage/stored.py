"""Responses the upstream stores (the Responses API's ``store``, on by default), and whose they are.

Every organization reaches the upstream through keyplane's own provider key, so the upstream
would let any of them read, continue or delete any stored response. keyplane notes the project
that created each one, and serves it (``GET``/``DELETE /v1/responses/{id}``, its input items, a
``previous_response_id``) to keys of that project only, from the upstream that stored it.
keyplane forgets them after the retention (``stored_response_days``, 30 as OpenAI keeps them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str  # the upstream's response id (resp_…)
    org_id: str
    project_id: str
    upstream: str  # the name of the upstream that stored it
    created_at: int
    # What continuing it adds to a request's input at most: its input and output tokens, as its
    # upstream reported them (None until its request ended, or when they were not reported). A
    # continuation's hold counts them, and so does its estimate when no usage comes.
    context_tokens: int | None = None


class ResponseStore(Protocol):
    def add_responses(self, rows: Sequence[StoredResponse]) -> None:
        """Stores the rows; of one already stored (a retried batch, or noted again when its
        request ended) only a missing ``context_tokens`` is filled in."""

    def stored_response(self, response_id: str) -> StoredResponse | None: ...

    def forget_response(self, response_id: str) -> None: ...

    def forget_responses_before(self, at: int, limit: int) -> int:
        """Forgets up to ``limit`` of the responses stored before ``at``, oldest first; returns
        how many."""
        ...
