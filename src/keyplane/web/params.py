"""The request parameters the Admin API's routes share: a list's page (``limit``, ``after``, as
OpenAI's lists take them) and a create's ``Idempotency-Key`` header."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

Limit = Annotated[int, Query(ge=1, le=100, description="Objects per page.")]
After = Annotated[
    str | None, Query(max_length=100, description="The last id of the previous page.")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="A replay returns the first result; reusing it with another body answers 409.",
    ),
]
