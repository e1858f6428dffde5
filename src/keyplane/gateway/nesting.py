"""How deeply a request's JSON may nest: as deep as keyplane can write it back.

orjson reads JSON nested up to 1,024 levels but writes at most 254 (its recursion limit). The
gateway writes a body back when it rewrites it (a default model, a stream's usage option, a
lowered output cap) and when it counts the tokens of its tool definitions, both after reading it:
a body nested deeper failed there with a 500, after its money hold was placed (and the hold was
never released). Such a body is refused when it is read instead.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.gateway.errors import bad_request

MAX_DEPTH = 254  # the most nested arrays and objects orjson writes


def check_nesting(body: bytes, payload: Any) -> None:
    """Raises a 400 ApiError when ``payload``, read from ``body``, nests deeper than
    ``MAX_DEPTH``. A body with fewer brackets than that cannot: counted at C speed, so only the
    rare body with more (a long conversation, say) is written once to find out."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    try:
        orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise bad_request(
            f"The JSON body is nested too deeply: keyplane reads at most {MAX_DEPTH} levels of "
            "arrays and objects."
        ) from None
