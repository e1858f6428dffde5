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

- **Another Content-Type**: a JSON body sent as ``text/plain`` or as a form
  (``application/x-www-form-urlencoded`` is curl's default) may be read as a form, or refused
  otherwise than keyplane billed. OpenAI refuses it (400 ``unsupported_content_type``), and so does
  keyplane (``check_json_type``); a body with no type is forwarded as ``application/json``.

So the body is forwarded as orjson writes back what it read (``canonical``): one value a key, the
one keyplane saw, at every depth. That costs one ``orjson.dumps`` a request, written once with
what keyplane adds before the hold (a default model, a stream's ``include_usage``; only a cap the
hold lowers writes it again); it replaced two ``bytes.count`` passes over the body that bounded
its nesting, which cost more (a byte at a time: ~100 µs for a 17 KB body against ~8 µs to write
it). And a field keyplane reads, written in another case (or with the letters Go folds into ASCII
ones: ``ſ``, ``ı``, ``İ``, the Kelvin sign), is refused with 400 (``check_fields``): no rewriting
could say which of the two an upstream reads. (An upload is forwarded as it came: what another
multipart parser could read otherwise is refused by forms.parse_form.)

orjson reads JSON nested up to 1,024 levels but writes at most 254 (its recursion limit): a body
nested deeper is refused when it is written, before any money is held (it failed with a 500 after
its hold was placed, when keyplane wrote it back after the hold).
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
# Other fields at the top of a body, as OpenAI spells them: known not to be variants without
# folding them (a set lookup, where folding costs two new strings).
_USUAL = frozenset(
    {
        "temperature", "top_p", "user", "seed", "stop", "tool_choice", "parallel_tool_calls",
        "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
        "metadata", "modalities", "audio", "prediction", "reasoning_effort", "reasoning",
        "service_tier", "verbosity", "web_search_options", "encoding_format", "dimensions",
        "voice", "speed", "include", "truncation", "safety_identifier", "prompt_cache_key",
        "suffix", "echo", "style", "top_k", "repetition_penalty", "min_p",
    }
)  # fmt: skip


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
    (``items``: the field holding them on this endpoint, if any) input items and their parts.
    (Every request runs it: one pass over each object's keys and values, the error's path built
    only on an error.)"""
    for key, value in payload.items():
        if key in _TOP:
            kind = type(value)
            if kind is list:
                if key == "messages" or key == items:
                    _check_items(value, key)
                elif key == "tools":
                    for i, tool in enumerate(value):
                        if type(tool) is dict:
                            wrong = _variant(tool, _TOOL)
                            if wrong is not None:
                                raise _refused(wrong, f"tools[{i}].{wrong}")
            elif kind is dict and key == "stream_options":
                wrong = _variant(value, _OPTIONS)
                if wrong is not None:
                    raise _refused(wrong, "stream_options." + wrong)
        elif key not in _USUAL and _folded(key) in _TOP:
            raise _refused(key, key)


def _check_items(items: list[Any], field: str) -> None:
    """Checks each message or input item of ``items`` (the list in ``field``) and the parts in
    its ``content`` and ``output`` (an item is read as a part too: billing.bounds)."""
    for i, item in enumerate(items):
        if type(item) is dict:
            where = _check_part(item, True)
            if where is not None:
                raise _refused(where.rpartition(".")[2], f"{field}[{i}]{where}")


def _check_part(part: dict[str, Any], item: bool) -> str | None:
    """The path from ``part`` to its first misnamed key, or to one of its image object's, or
    (``item``: a message or input item) of the parts in its ``content`` or ``output``; None when
    there is none."""
    for key, value in part.items():
        if key in _ITEM:
            kind = type(value)
            if kind is dict:
                if key == "image_url" or key == "image":
                    wrong = _variant(value, _IMAGE)
                    if wrong is not None:
                        return f".{key}.{wrong}"
                elif item and (key == "content" or key == "output"):  # (a call's output: a part)
                    where = _check_part(value, False)
                    if where is not None:
                        return f".{key}{where}"
            elif kind is list and item and (key == "content" or key == "output"):
                for j, each in enumerate(value):
                    if type(each) is dict:
                        where = _check_part(each, False)
                        if where is not None:
                            return f".{key}[{j}]{where}"
        elif _folded(key) in _ITEM:
            return "." + key
    return None


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


def check_json_type(kind: bytes) -> None:
    """Raises a 400 ApiError, as OpenAI answers it, unless Content-Type ``kind`` says JSON
    (``application/json``, in any case, with parameters: a charset only if UTF-8, which is all
    keyplane reads). An upstream may read a JSON body sent as another type otherwise than keyplane
    did (a form, say: ``application/x-www-form-urlencoded`` is curl's default), or refuse it in
    its own way."""
    media, *params = kind.split(b";")
    if media.strip().lower() == b"application/json" and all(_utf8(p) for p in params):
        return
    shown = kind[:100].decode("latin-1")
    raise bad_request(
        f"Unsupported content type: '{shown}'. This API method only accepts 'application/json' "
        f"requests (in UTF-8), but you specified the header 'Content-Type: {shown}'. Please try "
        "again with a supported content type.",
        code="unsupported_content_type",
    )


def _utf8(param: bytes) -> bool:
    """Whether a Content-Type parameter is not a charset, or is UTF-8."""
    name, _, value = param.partition(b"=")
    charset = value.strip().strip(b'"').lower()
    return name.strip().lower() != b"charset" or charset in (b"utf-8", b"utf8")


def content_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
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
