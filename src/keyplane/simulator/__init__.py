"""Built-in upstream simulator: a small OpenAI-compatible server for offline use.

Used in tests, local demos and benchmarks in place of a real model API. Every answer
carries the header ``x-simulator: keyplane`` so it cannot be mistaken for a real model, and
every answer is deterministic: no tokenizer, no model, no randomness that a test could see.

Each module holds one part of the API and documents its rules:

* ``app``: the ASGI app (``create_app``), its routes and ``serve``;
* ``config``: ``SimulatorConfig``, the timing, output length and models served;
* ``tokens``: token accounting and the text the simulator writes;
* ``chat``: chat completions and legacy text completions;
* ``responses``: the Responses API and the responses it keeps;
* ``embeddings``, ``moderations``, ``images``;
* ``transcriptions``: speech to text; ``speech``: text to speech;
* ``params``: a request's JSON body and parameters, and OpenAI's errors for bad ones;
* ``replies``: what a route answers and how it is sent, with the configured delays.
"""

from keyplane.simulator.app import create_app, serve
from keyplane.simulator.config import DEFAULT_MODELS, SimulatorConfig
from keyplane.simulator.images import PNG_1X1
from keyplane.simulator.moderations import MODERATION_CATEGORIES
from keyplane.simulator.replies import ASGIApp
from keyplane.simulator.responses import response_input_tokens
from keyplane.simulator.speech import SPEECH_HEADER, speech_audio
from keyplane.simulator.tokens import TOKEN_CHARS, completion_text, prompt_tokens, text_tokens
from keyplane.simulator.transcriptions import (
    AUDIO_TOKENS_PER_SECOND,
    TRANSCRIBE_CONTEXT,
    audio_seconds,
    transcript_text,
)

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_MODELS",
    "MODERATION_CATEGORIES",
    "PNG_1X1",
    "SPEECH_HEADER",
    "TOKEN_CHARS",
    "TRANSCRIBE_CONTEXT",
    "ASGIApp",
    "SimulatorConfig",
    "audio_seconds",
    "completion_text",
    "create_app",
    "prompt_tokens",
    "response_input_tokens",
    "serve",
    "speech_audio",
    "text_tokens",
    "transcript_text",
]
