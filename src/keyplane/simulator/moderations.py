"""Moderation (``POST /v1/moderations``), deterministic: an input is flagged (category
``violence``, score 0.99) when its text contains ``FLAG_MARKER`` (``"[flag]"``); every other
category and input scores 0.0001."""

from __future__ import annotations

import uuid
from typing import Any

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.params import JSON, RequestError, invalid_type, known_model
from keyplane.simulator.replies import Reply

# fmt: off
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
# The categories OpenAI's omni moderation also applies to images.
IMAGE_CATEGORIES = frozenset({
    "violence", "violence/graphic", "self-harm", "self-harm/intent", "self-harm/instructions",
    "sexual",
})
# fmt: on
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
FLAG_MARKER = "[flag]"
FLAGGED_SCORE = 0.99
UNFLAGGED_SCORE = 0.0001


def _moderation_part(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if value.get("type") == "text":
        return isinstance(value.get("text"), str)
    return value.get("type") == "image_url" and isinstance(value.get("image_url"), dict)


def _moderation_inputs(value: Any) -> list[tuple[str, frozenset[str]]]:
    """(text, input types) per moderated input: a string, strings, or ONE list of parts."""
    if value is None:
        raise RequestError(400, "Missing required parameter: 'input'.", "input", "missing")
    if isinstance(value, str):
        return [(value, frozenset({"text"}))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v, frozenset({"text"})) for v in value]
        if all(_moderation_part(v) for v in value):
            text = "".join(p["text"] for p in value if p["type"] == "text")
            kinds = frozenset("image" if p["type"] == "image_url" else "text" for p in value)
            return [(text, kinds)]
    expected = "a string, an array of strings or an array of content parts"
    raise invalid_type("input", expected, value)


def _moderation_result(text: str, kinds: frozenset[str]) -> JSON:
    """Flagged for ``violence`` exactly when the text holds ``FLAG_MARKER``."""
    flagged = FLAG_MARKER in text
    categories = {c: flagged and c == "violence" for c in MODERATION_CATEGORIES}
    applied = {
        c: [k for k in ("text", "image") if k in kinds and (k == "text" or c in IMAGE_CATEGORIES)]
        for c in MODERATION_CATEGORIES
    }
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": {
            c: FLAGGED_SCORE if hit else UNFLAGGED_SCORE for c, hit in categories.items()
        },
        "category_applied_input_types": applied,
    }


def moderate(body: JSON, config: SimulatorConfig) -> Reply:
    model = DEFAULT_MODERATION_MODEL if body.get("model") is None else known_model(body, config)
    results = [_moderation_result(*one) for one in _moderation_inputs(body.get("input"))]
    return 200, {"id": "modr-" + uuid.uuid4().hex, "model": model, "results": results}
