"""Embeddings (``POST /v1/embeddings``): for each input a unit vector drawn from a hash of it,
``dimensions`` long (``DEFAULT_DIMENSIONS`` unless asked), as floats or base64; its tokens are
``text_tokens`` per string or the length of each token array."""

from __future__ import annotations

import base64
import hashlib
import math
import struct

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.params import JSON, RequestError, known_model, positive_int, text_inputs
from keyplane.simulator.replies import Reply

DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 8192


def _vector(key: bytes, dimensions: int) -> list[float]:
    """Deterministic unit vector from a hash, rounded to float32 so base64 round-trips."""
    raw = hashlib.shake_256(key).digest(4 * dimensions)
    values = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def create_embeddings(body: JSON, config: SimulatorConfig) -> Reply:
    model = known_model(body, config)
    inputs = text_inputs(body.get("input"), "input")
    dims = positive_int(body, "dimensions", MAX_DIMENSIONS) or DEFAULT_DIMENSIONS
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        message = f"Invalid value for 'encoding_format': expected 'float' or 'base64', got {fmt!r}."
        raise RequestError(400, message, "encoding_format", "invalid_value")
    data: list[JSON] = []
    for index, (key, _) in enumerate(inputs):
        vector = _vector(key, dims)
        embedding: list[float] | str = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(t for _, t in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {"object": "list", "data": data, "model": model, "usage": usage}
