"""The upstream reads the request keyplane read: its JSON forwarded as keyplane parsed it, and the
field names only keyplane's parser tells apart refused.

keyplane decides the model, the output caps, ``n``, ``stream`` and the prompt it holds money for
and bills from its own parse of the body (orjson). An upstream whose parser reads the same bytes
differently would serve another request than the one held for:

- **A key given twice** (``{"max_tokens": 5, "max_tokens": 100000}``, at any depth): orjson keeps
  the last, other parsers the first or refuse it. An escaped key (``"mod\\u0065l"``) is the same
  key once decoded.
- **Case variants**: Go's encoding/json (Ollama, many OpenAI-compatible servers) matches a field's
  name regardless of case, so it reads ``"MODEL"`` or ``"Max_Tokens"`` as ``model`` and
  ``max_tokens``, which keyplane, like OpenAI, does not.

So the body is forwarded as orjson writes back what it read (``canonical``): one value a key, the
one keyplane saw, at every depth. That costs one ``orjson.dumps`` a request; it replaced two
``bytes.count`` passes over the body that bounded its nesting, which cost more (a byte at a time:
~100 µs for a 17 KB body against ~8 µs to write it). And a field keyplane reads, written in
another case (or with the letters Go folds into ASCII ones: ``ſ``, ``ı``, ``İ``, the Kelvin sign),
is refused with 400 (``check_fields``): no rewriting could say which of the two an upstream reads.

orjson reads JSON nested up to 1,024 levels but writes at most 254 (its recursion limit): a body
nested deeper is refused when it is read, before any money is held (it failed with a 500 after its
hold was placed, when keyplane wrote it back).
"""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.gateway.errors import ApiError, bad_request

MAX_DEPTH = 254  # the most nested arrays and objects orjson writes

# The fields keyplane reads, by where they are: at the top of any endpoint's body...
_TOP = frozenset(
    {
        "model", "messages", "prompt", "input", "instructions", "n", "best_of", "max_tokens",
        "max_completion_tokens", "max_output_tokens", "stream", "stream_options", "store",
        "previous_response_id", "background", "conversation", "tools", "functions",
        "response_format", "text", "quality", "size",
    }
)  # fmt: skip
_OPTIONS = frozenset({"include_usage"})  # in stream_options
# ...in a chat message or a Responses API input item, and in their content parts (an item is read
# as a part too: billing.bounds)...
_ITEM = frozenset(
    {
        "role", "type", "content", "tool_calls", "output", "text", "image_url", "image", "file",
        "file_id", "file_data", "file_url",
    }
)  # fmt: skip
_IMAGE = frozenset({"url"})  # in a part's image_url (or image) object
_TOOL = frozenset({"type"})  # in a Responses API tool


def canonical(payload: dict[str, Any]) -> bytes:
    """The body the upstream is sent: ``payload`` (as orjson read the client's body) written back.
    Raises a 400 ApiError when it nests deeper than ``MAX_DEPTH``."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise bad_request(
            f"The JSON body is nested too deeply: keyplane reads at most {MAX_DEPTH} levels of "
            "arrays and objects."
        ) from None


def check_fields(payload: dict[str, Any], items: str | None) -> None:
    """Raises a 400 ApiError naming the first field keyplane reads that ``payload`` writes in
    another case: at its top, in its ``stream_options``, its tools, and in the ``messages`` or
    (``items``: the field holding them on this endpoint, if any) input items and their parts."""
    wrong = _variant(payload, _TOP)
    if wrong is not None:
        raise _refused(wrong, wrong)
    options = payload.get("stream_options")
    if type(options) is dict:
        wrong = _variant(options, _OPTIONS)
        if wrong is not None:
            raise _refused(wrong, "stream_options." + wrong)
    for field in ("messages", items, "tools"):
        if field is None:
            continue
        listed = payload.get(field)
        if type(listed) is not list:
            continue
        tools = field == "tools"
        for i, item in enumerate(listed):
            if type(item) is not dict:
                continue
            if tools:
                wrong = _variant(item, _TOOL)
                where = None if wrong is None else "." + wrong
            else:
                wrong, where = _check_part(item, True)
            if wrong is not None:  # (the path is written only then: most requests pass)
                raise _refused(wrong, f"{field}[{i}]{where}")


def _check_part(part: dict[str, Any], item: bool) -> tuple[str | None, str | None]:
    """The first misnamed key of a message or input item (``item``: or of the parts in its
    ``content`` and ``output``), or of a content part, or of its image object, and its path from
    ``part``; (None, None) when there is none."""
    wrong = _variant(part, _ITEM)
    if wrong is not None:
        return wrong, "." + wrong
    for name in ("image_url", "image"):
        image = part.get(name)
        if type(image) is dict:
            wrong = _variant(image, _IMAGE)
            if wrong is not None:
                return wrong, f".{name}.{wrong}"
    if not item:
        return None, None
    for name in ("content", "output"):
        inner = part.get(name)
        if type(inner) is dict:  # (a call's output may be one part)
            wrong, where = _check_part(inner, False)
            if wrong is not None:
                return wrong, f".{name}{where}"
        elif type(inner) is list:
            for i, each in enumerate(inner):
                if type(each) is dict:
                    wrong, where = _check_part(each, False)
                    if wrong is not None:
                        return wrong, f".{name}[{i}]{where}"
    return None, None


def _variant(obj: dict[str, Any], names: frozenset[str]) -> str | None:
    """The first key of ``obj`` that is not one of ``names`` but folds to one."""
    for key in obj:
        if key not in names and _folded(key) in names:
            return key
    return None


def _folded(key: str) -> str:
    """``key`` as Go's encoding/json compares field names (each letter upper-cased after it is
    lower-cased), or more: ``ſ`` and ``ı`` fold to ``s`` and ``i`` there too, and ``İ``, which
    Python lowers to ``i`` and a combining dot."""
    folded = key.upper().lower()
    if "\u0307" in folded:
        folded = folded.replace("i\u0307", "i")
    return folded


def _refused(key: str, param: str) -> ApiError:
    meant, shown = _folded(key), key[:100]
    return bad_request(
        f"'{shown}' differs from '{meant}' only in letter case: some upstreams read it as "
        f"'{meant}', which keyplane reads only as written, so they could serve a request keyplane "
        f"did not check or hold money for. Send '{meant}', exactly so written.",
        param=param[:200],
    )


def content_type(headers: Any) -> bytes | None:
    """The Content-Type among a request's ASGI ``headers`` (None: it has none). Raises a 400
    ApiError when it has two: an upstream may read the other one (another multipart boundary, so
    other fields), and both are forwarded."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"content-type":
            if found is not None:
                raise bad_request(
                    "The request has more than one Content-Type header: send one.",
                    param="Content-Type",
                )
            found = value
    return found
