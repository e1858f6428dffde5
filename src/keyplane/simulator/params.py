"""Reading a request: its JSON body and its parameters, a bad one refused with OpenAI's
``invalid_request_error`` envelope (``RequestError``)."""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.tokens import text_tokens

JSON = dict[str, Any]


class RequestError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        self.status, self.payload = status, {"error": error}


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), "an unsupported value")


def invalid_type(param: str, expected: str, value: Any) -> RequestError:
    message = (
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead."
    )
    return RequestError(400, message, param, "invalid_type")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def known_model(body: JSON, config: SimulatorConfig) -> str:
    model = body.get("model")
    if model is None:
        raise RequestError(400, "Missing required parameter: 'model'.", "model", "missing")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if model not in config.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise RequestError(404, message, None, "model_not_found")
    return model


def positive_int(body: JSON, name: str, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise invalid_type(name, "an integer", value)
    if value < 1 or (maximum is not None and value > maximum):
        bound = ">= 1" if maximum is None else f"between 1 and {maximum}"
        message = f"Invalid '{name}': expected an integer {bound}, but got {value} instead."
        code = "integer_below_min_value" if value < 1 else "integer_above_max_value"
        raise RequestError(400, message, name, code)
    return int(value)


def text_inputs(value: Any, param: str) -> list[tuple[bytes, int]]:
    """(hash key, tokens) per input: a string, strings, a token array or token arrays."""
    if value is None:
        raise RequestError(400, f"Missing required parameter: '{param}'.", param, "missing")
    if isinstance(value, str):
        return [(value.encode(), text_tokens(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v.encode(), text_tokens(v)) for v in value]
        if all(_is_int(v) for v in value):
            return [(b"tokens:" + orjson.dumps(value), len(value))]
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return [(b"tokens:" + orjson.dumps(v), len(v)) for v in value]
    expected = "a string, an array of strings, an array of integers or an array of arrays"
    raise invalid_type(param, expected, value)


def check_items(items: list[Any], param: str) -> None:
    """Each of ``items`` (chat messages, Responses input items) must be an object whose
    ``content``, when given, is a string or an array."""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid_type(f"{param}[{i}]", "an object", item)
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid_type(f"{param}[{i}].content", "a string or an array", content)


def optional_str(body: JSON, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_type(name, "a string", value)
    return value


def optional_bool(body: JSON, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_type(name, "a boolean", value)
    return value


def choice(
    body: JSON, name: str, allowed: tuple[str, ...], default: str | None, model: str = ""
) -> str:
    """A string field that must be one of ``allowed`` (required when ``default`` is None); the
    error names ``model`` when the choices are that model's."""
    value = body.get(name)
    if value is None and default is None:
        message = f"Missing required parameter: '{name}'."
        raise RequestError(400, message, name, "missing_required_parameter")
    if value is None:
        return str(default)
    if not isinstance(value, str):
        raise invalid_type(name, "a string", value)
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        whose = f" for {model}" if model else ""
        message = f"Invalid '{name}'{whose}: expected one of {supported}, but got {value!r}."
        raise RequestError(400, message, name, "invalid_value")
    return value


def parse_json(raw: bytes) -> JSON:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = (
            "We could not parse the JSON body of your request. The API expects a JSON payload."
        )
        raise RequestError(400, message) from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    return body
