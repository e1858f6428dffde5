"""Every Admin API error in OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``.

Domain errors map to HTTP in the gateway's one table (``keyplane.gateway.errors.from_domain``), so
a domain error reads the same on both surfaces. This module adds what only a framework produces:
request validation (FastAPI's 422 becomes OpenAI's 400 ``invalid_request_error`` naming the
field), unknown routes and methods, and the last-resort 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from keyplane.errors import InvalidRequest, KeyplaneError
from keyplane.gateway.errors import ApiError, from_domain
from keyplane.web.schemas import ErrorEnvelope

MAX_BODY_BYTES = 64 * 1024  # Admin API bodies are a few fields; refuse memory-filling uploads early
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "model": ErrorEnvelope}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing, invalid or non-admin API key"),
        (404, "No such object in this organization"),
        (503, "keyplane cannot reach its database"),
    )
}


class AdminApiError(Exception):
    """Raises an ``ApiError`` through FastAPI. The gateway's ``ApiError`` is a frozen dataclass,
    and Starlette writes to the exceptions it handles (it clears their traceback)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def respond(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in error.extra_headers}
    out.update(headers or {})
    return JSONResponse(error.body(), status_code=error.status, headers=out)


@contextlib.contextmanager
def params_named(names: Mapping[str, str]) -> Iterator[None]:
    """Renames a service's ``param`` to the API field it came from (``recharge_threshold`` →
    ``auto_recharge.threshold_micro_usd``), so a client can point at the right input."""
    try:
        yield
    except InvalidRequest as exc:
        if exc.param is None or exc.param not in names:
            raise
        raise InvalidRequest(exc.message, param=names[exc.param]) from None


def too_large(limit: int = MAX_BODY_BYTES) -> ApiError:
    return ApiError(413, f"The request body is larger than {limit // 1024} KiB.")


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of a request that did not parse, as OpenAI words it."""
    errors = exc.errors()
    if not errors:
        return ApiError(400, "The request is not valid.")
    err = errors[0]
    where = [str(part) for part in err.get("loc", ())]
    source, path = (where[0], where[1:]) if where else ("", [])
    param = ".".join(path) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The Admin API expects a JSON payload.)",
        )
    if source == "body" and param is None:
        if kind == "missing":
            return ApiError(400, "This request needs a JSON body.")
        return ApiError(400, "The request body must be a JSON object.")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    ctx = err.get("ctx") or {}
    message = str(ctx["error"]) if kind == "value_error" and "error" in ctx else err.get("msg", "")
    return ApiError(400, f"Invalid value for '{param}': {message}", param=param)


def install(app: FastAPI) -> None:
    """Registers the handlers that put every error of ``app`` in the envelope."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AdminApiError)
        return respond(exc.error)

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KeyplaneError)
        return respond(from_domain(exc))

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            error = ApiError(404, f"Invalid URL ({method} {path})")
        elif exc.status_code == 405:
            error = ApiError(405, f"Method {method} is not allowed on {path}.")
        elif exc.status_code == 413:  # (the detail: the limit, when the body-size check raised it)
            detail = str(exc.detail)
            error = too_large(int(detail)) if detail.isdigit() else too_large()
        else:
            error = ApiError(exc.status_code, str(exc.detail))
        return respond(error, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs and re-raises after this answer; the message never carries internals.
        return respond(
            ApiError(500, "keyplane failed to handle this request.", type="server_error")
        )

    app.add_exception_handler(AdminApiError, on_api_error)
    app.add_exception_handler(KeyplaneError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
