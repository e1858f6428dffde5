"""The simulator as a plain ASGI app: its routes (``/v1/models`` answered here, the others by
their modules), and ``serve``, which runs it on a socket (``keyplane simulate``, ``make run``)."""

from __future__ import annotations

import socket

from keyplane.simulator.chat import completion
from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.embeddings import create_embeddings
from keyplane.simulator.images import edit_images, generate_images, vary_images
from keyplane.simulator.moderations import moderate
from keyplane.simulator.params import JSON, RequestError, parse_json
from keyplane.simulator.replies import (
    ASGIApp,
    Receive,
    Reply,
    Scope,
    Send,
    header,
    read_body,
    send_reply,
)
from keyplane.simulator.responses import (
    MAX_STORED_RESPONSES,
    ResponseStore,
    create_response,
    stored_response,
)
from keyplane.simulator.speech import text_to_speech
from keyplane.simulator.transcriptions import speech_to_text

MODEL_CREATED = 1700000000
OWNED_BY = "keyplane-simulator"


def _model_card(model: str) -> JSON:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": OWNED_BY}


def _dispatch(
    method: str,
    path: str,
    raw: bytes,
    content_type: str,
    config: SimulatorConfig,
    store: ResponseStore,
) -> Reply:
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [_model_card(m) for m in config.models]}
    if method == "GET" and path.startswith("/v1/models/"):
        model = path.removeprefix("/v1/models/")
        if model not in config.models:
            message = f"The model '{model}' does not exist"
            raise RequestError(404, message, "model", "model_not_found")
        return 200, _model_card(model)
    if method == "POST" and path == "/v1/chat/completions":
        return completion(parse_json(raw), config, chat=True)
    if method == "POST" and path == "/v1/completions":
        return completion(parse_json(raw), config, chat=False)
    if method == "POST" and path == "/v1/embeddings":
        return create_embeddings(parse_json(raw), config)
    if method == "POST" and path == "/v1/responses":
        return create_response(parse_json(raw), config, store)
    if path.startswith("/v1/responses/"):
        return stored_response(method, path, store)
    if method == "POST" and path == "/v1/moderations":
        return moderate(parse_json(raw), config)
    if method == "POST" and path == "/v1/images/generations":
        return generate_images(parse_json(raw), config)
    if method == "POST" and path == "/v1/images/edits":
        return edit_images(raw, content_type, config)
    if method == "POST" and path == "/v1/images/variations":
        return vary_images(raw, content_type, config)
    if method == "POST" and path == "/v1/audio/transcriptions":
        return speech_to_text(raw, content_type, config, "transcribe")
    if method == "POST" and path == "/v1/audio/translations":
        return speech_to_text(raw, content_type, config, "translate")
    if method == "POST" and path == "/v1/audio/speech":
        return text_to_speech(parse_json(raw), config)
    raise RequestError(404, f"Invalid URL ({method} {path})")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# A frozen dataclass: the one default instance is never changed.
def create_app(config: SimulatorConfig = SimulatorConfig()) -> ASGIApp:  # noqa: B008
    """The simulator as a plain ASGI application, with its own store of responses."""
    store = ResponseStore(MAX_STORED_RESPONSES)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = str(scope["method"]).upper()
        path = str(scope["path"]).rstrip("/") or "/"
        raw = await read_body(receive)
        content_type = header(scope, b"content-type")
        try:
            reply = _dispatch(method, path, raw, content_type, config, store)
        except RequestError as exc:
            reply = (exc.status, exc.payload)
        delay = config.latency_ms / 1000.0 if method == "POST" else 0.0
        await send_reply(send, reply, delay, config.tokens_per_second)

    return app


def serve(sock: socket.socket, config: SimulatorConfig) -> None:
    """Run the simulator on the listening ``sock`` until stopped (Ctrl-C / SIGTERM)."""
    from keyplane import server

    simulator = server.make_server(create_app(config))

    async def main() -> None:
        server.stop_on_signals([simulator])
        await simulator.serve([sock])

    server.run(main())
