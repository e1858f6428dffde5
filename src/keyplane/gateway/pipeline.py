"""The per-request pipeline, top to bottom:

authenticate → IP allowlists → permission → parse → model allowed → route → rate limits →
hold money → forward → meter → settle.

Nothing here touches SQL: keys come from the authenticator's cache; rate limits from the limiter;
holds, settlements and usage records go through the money guard. Every answer from the rate-limit
step on carries OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

import orjson

from keyplane.billing.bounds import CostBound, UnboundedInput, cost_bound, input_bounds
from keyplane.billing.wallet import Hold, OrgMoney
from keyplane.clock import Clock
from keyplane.errors import KeyplaneError
from keyplane.gateway import media
from keyplane.gateway.access import AccessGuard, Levels
from keyplane.gateway.asgi import Receive, Send, header, send_bytes
from keyplane.gateway.canonical import canonical, check_fields, check_json_type, content_type
from keyplane.gateway.errors import (
    ApiError,
    bad_request,
    from_domain,
    missing_key,
    model_not_found,
    model_not_priced,
)
from keyplane.gateway.money import MoneyGuard
from keyplane.gateway.ratelimits import RateGuard
from keyplane.gateway.responses import ResponseOwners, check_request, previous_not_found
from keyplane.gateway.streaming import (
    NO_AUDIO,
    Audio,
    AudioRelay,
    SseAccounting,
    TranscriptAccounting,
    answer_usage,
    error_event,
    estimated_output,
    json_object,
)
from keyplane.gateway.transport import UpstreamError, UpstreamResponse
from keyplane.gateway.upstreams import Upstream, UpstreamRouter, UpstreamUnavailable
from keyplane.keys.authenticator import KeyAuthenticator
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import Access, Group
from keyplane.limits.headers import rate_limit_headers, rejection_message
from keyplane.limits.ratelimit import Dimension, LimitScope, Ticket
from keyplane.usage import tokens
from keyplane.usage.pricing import MICRO, Price, PriceTable
from keyplane.usage.records import Outcome, UsageRecord
from keyplane.usage.stored import StoredResponse

log = logging.getLogger("keyplane.gateway")

# (Retry-After comes on an upstream's 429 or 503: the SDKs wait as long as it asks.)
_PASS_RESPONSE = frozenset(
    {b"content-type", b"openai-processing-ms", b"openai-version", b"retry-after", b"retry-after-ms"}
)
# Enum members used on every request, as globals: on Python 3.11 ``KeyKind.ADMIN`` goes through the
# enum metaclass's ``__getattr__`` hook (~80 ns, against ~10 ns for a global).
_ADMIN = KeyKind.ADMIN
_COMPLETED = Outcome.COMPLETED
_JSON_TYPE = (b"content-type", b"application/json")
MAX_CHOICES = 128  # n and best_of at most (OpenAI's limit for n)
UNCAPPED_OUTPUT = 4096  # the output TPM counts for a request without max_tokens (corrected later)
# The fields that cap chat's and completions' output.
_CAPS = ("max_completion_tokens", "max_tokens")


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # as recorded in usage: "chat.completions"
    upstream_path: str  # appended to an upstream's base URL (which ends in /v1)
    can_stream: bool
    required: str  # the body field without which the request is malformed
    estimate_input: Callable[[dict[str, Any], int], int]  # (payload, tokens an image counts)
    group: Group  # the permission a key needs (write access to this group)
    has_output: bool = True  # generates tokens (capped by max_tokens); embeddings do not
    caps: tuple[str, ...] = _CAPS  # the body fields that cap the output
    ask_usage: bool = True  # a stream's usage comes only if asked (stream_options.include_usage)
    default_model: str | None = None  # the model when the body names none (else it must)
    responses: bool = False  # the Responses API: stored responses, its own events and fields
    # Billed per image generated (by quality and size), or by the tokens its answer reports on an
    # image model priced so (gpt-image-1: its price entry's tokens_per_image).
    per_image: bool = False
    # A multipart upload of audio, billed per minute of it, or by the tokens its answer reports on
    # a model priced so (gpt-4o-transcribe: its price entry's audio_input).
    audio_in: bool = False
    audio_out: bool = False  # text to speech: billed per character, its audio relayed as it comes
    # A multipart upload of files (audio_in; else images, to edit or vary): the largest body it
    # takes (a JSON body's limit otherwise), parsed on a worker thread.
    upload_bytes: int = 0


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(
        "chat.completions", "/chat/completions", True, "messages",
        tokens.estimate_chat, Group.CHAT,
    ),
    "/v1/completions": Endpoint(
        "completions", "/completions", True, "prompt", lambda p, _: tokens.estimate_input(p.get("prompt")),
        Group.CHAT,
    ),
    "/v1/embeddings": Endpoint(
        "embeddings", "/embeddings", False, "input", lambda p, _: tokens.estimate_input(p.get("input")),
        Group.EMBEDDINGS, has_output=False,
    ),
    "/v1/responses": Endpoint(
        "responses", "/responses", True, "model", tokens.estimate_responses, Group.CHAT,
        caps=("max_output_tokens",), ask_usage=False, responses=True,
    ),
    "/v1/images/generations": Endpoint(
        "images.generations", "/images/generations", False, "prompt", lambda p, _: 0,
        Group.IMAGES, has_output=False, caps=(), default_model="dall-e-2", per_image=True,
    ),
    "/v1/images/edits": Endpoint(
        "images.edits", "/images/edits", False, "image", lambda p, _: 0, Group.IMAGES,
        has_output=False, caps=(), default_model="dall-e-2", per_image=True,
        upload_bytes=media.IMAGE_UPLOAD_MAX_BYTES,
    ),
    "/v1/images/variations": Endpoint(
        "images.variations", "/images/variations", False, "image", lambda p, _: 0, Group.IMAGES,
        has_output=False, caps=(), default_model="dall-e-2", per_image=True,
        upload_bytes=media.IMAGE_UPLOAD_MAX_BYTES,
    ),
    "/v1/audio/transcriptions": Endpoint(  # (streamed: on a model priced by tokens only)
        "audio.transcriptions", "/audio/transcriptions", True, "file", lambda p, _: 0,
        Group.AUDIO, has_output=False, caps=(), ask_usage=False, audio_in=True,
        upload_bytes=media.AUDIO_MAX_BYTES,
    ),
    "/v1/audio/translations": Endpoint(
        "audio.translations", "/audio/translations", False, "file", lambda p, _: 0,
        Group.AUDIO, has_output=False, caps=(), audio_in=True, upload_bytes=media.AUDIO_MAX_BYTES,
    ),
    "/v1/audio/speech": Endpoint(
        "audio.speech", "/audio/speech", False, "input", lambda p, _: 0,
        Group.AUDIO, has_output=False, caps=(), audio_out=True,
    ),
    "/v1/moderations": Endpoint(
        "moderations", "/moderations", False, "input",
        lambda p, _: tokens.estimate_input(p.get("input")), Group.MODERATIONS, has_output=False,
        default_model="omni-moderation-latest",
    ),
}  # fmt: skip


@final
class Call:
    """What the pipeline knows about one request as it goes. (A plain class, not a dataclass:
    compiled, its ``__init__`` is C; a dataclass's stays Python, see keyplane/values.py.)"""

    __slots__ = (
        "audio_bytes",
        "carried",
        "characters",
        "choices",
        "client_ip",
        "endpoint",
        "estimated_input",
        "forwarded",
        "heard",
        "held_output",
        "hold",
        "image_price",
        "images_in",
        "input_bound",
        "key",
        "levels",
        "longest",
        "metered",
        "model",
        "price",
        "rate_headers",
        "request_id",
        "speaks",
        "started",
        "store",
        "stored_at",
        "stream",
        "ticket",
        "used",
    )  # fmt: skip

    def __init__(
        self,
        request_id: str,
        endpoint: Endpoint,
        key: ApiKey,
        levels: Levels,  # the key's organization and project access policies
        client_ip: str | None,
        started: float,  # monotonic
    ) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.key = key
        self.levels = levels
        self.client_ip = client_ip
        self.started = started
        self.model = ""
        self.stream = False
        self.estimated_input = 0
        self.hold: Hold | None = None
        self.held_output = 0  # the most output tokens the hold covers (all outputs together)
        self.input_bound = 0  # the most input tokens the request can be billed
        self.price: Price | None = None  # in effect at admission: the hold and the bill use it
        self.ticket: Ticket | None = None
        self.rate_headers: list[tuple[bytes, bytes]] = []
        self.forwarded = False
        self.metered = False
        # A Responses API request that continues a stored response: the upstream storing it.
        self.stored_at: Upstream | None = None
        self.store = False  # a Responses API request whose response the upstream stores
        self.carried: int | None = None  # the tokens a continued response adds, if known
        self.used: int | None = None  # the input and output tokens its upstream reported
        self.choices = 1  # the outputs it asks for (images: how many)
        self.image_price = 0  # micro-dollars per image generated (per_image endpoints)
        self.images_in = 0  # the image files uploaded (image edits and variations)
        self.audio_bytes = 0  # the size of the audio file uploaded (audio_in endpoints)
        self.longest = 0  # the most seconds it may play: what its hold covers, and its bill
        self.characters = 0  # the text it asks to speak (audio_out endpoints): its hold and bill
        # A chat request that sends audio: its likely audio tokens (in ``estimated_input``: what a
        # bill with no usage counts as audio); one that asks for audio output (``speaks``).
        self.heard = 0
        self.speaks = False


class Pipeline:
    def __init__(
        self,
        auth: KeyAuthenticator,
        router: UpstreamRouter,
        prices: PriceTable,
        money: MoneyGuard,
        rates: RateGuard,
        access: AccessGuard,
        clock: Clock,
        stored: ResponseOwners,
        *,
        max_body_bytes: int,
        default_max_output_tokens: int,
    ) -> None:
        self.stored = stored
        self.auth = auth
        self.router = router
        self.prices = prices
        self.money = money
        self.rates = rates
        self.access = access
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.default_max_output_tokens = default_max_output_tokens

    async def admit_caller(
        self, scope: Any, client_ip: str | None, group: Group, access: Access
    ) -> tuple[ApiKey, Levels]:
        """The first checks, before the body is read: key, IP allowlists, permission. Returns the
        key and its organization's and project's access policies."""
        raw = header(scope, b"authorization")
        if raw is None:
            raise missing_key()
        scheme, _, token = raw.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if not token or scheme.lower() != "bearer":
            raise missing_key()
        key = await self.auth.authenticate(token, client_ip)
        if key.kind is _ADMIN:
            raise ApiError(
                401, "Admin keys can only call the Admin API (/v1/organization/…); use a project key.",
                code="invalid_api_key",
            )  # fmt: skip
        levels = await self.access.levels(key)
        self.access.check_ip(levels, key, client_ip)
        self.access.check_permission(key, group, access)
        return key, levels

    async def handle(self, call: Call, scope: Any, receive: Receive, send: Send) -> None:
        """Everything after ``admit_caller``; errors come out as ApiError carrying the rate-limit
        headers once the rate limits were checked."""
        try:
            await self._handle(call, scope, receive, send)
        except ApiError as exc:
            raise dataclasses.replace(
                exc, extra_headers=(*exc.extra_headers, *call.rate_headers)
            ) from None
        except KeyplaneError as exc:
            error = from_domain(exc)
            raise dataclasses.replace(
                error, extra_headers=(*error.extra_headers, *call.rate_headers)
            ) from None

    async def _handle(self, call: Call, scope: Any, receive: Receive, send: Send) -> None:
        audio, speech = call.endpoint.audio_in, call.endpoint.audio_out
        upload = call.endpoint.upload_bytes
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        kind = content_type(headers)  # (one: the upstream reads the body as keyplane)
        if kind != b"application/json" and not upload:  # (what the SDKs send: one comparison)
            if kind is None:  # the body is read as JSON: the upstream is told so
                headers = [*headers, _JSON_TYPE]
            else:
                check_json_type(kind)  # (another type: refused, as OpenAI does)
        body = await self._read_body(scope, receive, upload)
        client_wants_usage = False
        if upload:  # (a multipart upload of tens of megabytes: parsed on a worker thread)
            body, payload = await asyncio.to_thread(_upload, call, body, kind)
        else:
            payload = _parse(body, call.endpoint)
            if payload.get("model") is None:  # (_parse allowed it: the endpoint has a default)
                payload["model"] = call.endpoint.default_model
            endpoint = call.endpoint  # (a stream's last event's exact usage: asked for)
            if endpoint.can_stream and endpoint.ask_usage and payload.get("stream") is True:
                options = payload.get("stream_options")
                options = options if type(options) is dict else {}
                client_wants_usage = options.get("include_usage") is True
                payload["stream_options"] = {**options, "include_usage": True}
            # Its body from here on as keyplane read it, with what keyplane adds (canonical.py):
            # written once, before the hold, which bounds its nesting too. (Only a cap the hold
            # lowers is written after it: a second write, for a balance short of the whole cap.)
            body = canonical(payload)
        key, model = call.key, payload["model"]
        call.model = model
        self.access.check_model(call.levels, key, model)
        if call.endpoint.responses:
            upstreams = await self._continued(call, payload)
        else:
            upstreams = await self.router.candidates(model)
        if not upstreams:
            raise model_not_found(model)
        # A model keyplane cannot price cannot be held against a balance or a budget: refused,
        # not served free (an operator prices it, at 0 if it is free: price_files).
        call.price = self.prices.price(model, self.clock.now())
        if call.price is None:
            raise model_not_priced(model)
        # (its answer format checked, and its model priced per minute or by audio tokens)
        by_tokens = audio and media.audio_billing(
            call.price, payload, call.endpoint.name == "audio.translations"
        )
        if speech:  # (its input checked, and its model priced per character)
            call.characters = media.speech_characters(payload, call.price)
        call.estimated_input = call.endpoint.estimate_input(
            payload, tokens.image_estimate(call.price.image_input_tokens)
        )
        if call.stored_at is not None:  # what the stored response it continues adds
            call.estimated_input += (
                call.carried if call.carried is not None else call.price.context_window or 0
            )
        # The output tokens the images it asks for, or the transcript it asks for, may cost on a
        # model priced by tokens: known up front.
        token_output = 0
        # (read after audio_billing, which drops a transcription's where the model ignores it)
        call.stream = call.endpoint.can_stream and payload.get("stream") is True
        fields, asked = _output_cap(payload, call.endpoint.caps)
        # The most each output may be: the client's cap, else the model's (else a default).
        wanted = (
            (asked or call.price.max_output_tokens or self.default_max_output_tokens)
            if call.endpoint.has_output
            else 0
        )
        # Each of n choices (or best_of candidates, generated and billed, on completions), for
        # each prompt of a legacy completion's list, can write the whole cap: the hold and the
        # token estimate count them all. (_parse checked n and best_of.)
        images = 0  # what counts against images-per-minute limits
        if audio or speech:  # (one answer each; a form's fields are strings, not counts)
            choices = 1
        elif call.endpoint.per_image:  # n images (best_of is not an images field)
            choices = images = payload.get("n") or 1
        else:
            choices = max(payload.get("n") or 1, payload.get("best_of") or 1)
        if call.endpoint.name == "completions":
            choices *= _prompt_count(payload.get("prompt"))
        try:
            call.input_bound, heard, likely = input_bounds(
                len(body), payload, call.price, carried=call.stored_at is not None,
                carried_tokens=call.carried,
            )  # fmt: skip
            # (the field asking for audio output: chat's modalities, or its audio parameter; two
            # look-ups rule it out for the usual request)
            voice = None
            if ("modalities" in payload or "audio" in payload) and (
                call.endpoint.name == "chat.completions"
            ):
                voice = media.asks_audio(payload)
            if heard or voice is not None:  # audio in or out: at the audio prices, or refused
                param = "messages" if "messages" in payload else "input"
                media.check_chat_audio(call.price, heard, voice, param)
                call.heard, call.speaks = likely, voice is not None
                call.estimated_input += likely
            bound = cost_bound(call.price, call.input_bound, choices, heard, call.speaks)
            if call.endpoint.per_image:
                call.choices = choices
                if call.images_in:  # an upload: its fields and its images are read, not its bytes
                    call.input_bound, fixed = media.upload_input(
                        call.price, payload, call.images_in
                    )
                    bound = CostBound(fixed, 0)
                if call.price.tokens_per_image:  # priced by tokens
                    # n images at the most their quality and size may cost, and the prompt at a
                    # token a byte (``bound.fixed``; an upload's images at their most too): the
                    # worst case until the answer reports its usage.
                    token_output = choices * media.image_tokens(call.price, payload)
                    call.estimated_input = tokens.estimate_input(payload.get("prompt"))
                    call.estimated_input += call.images_in * tokens.image_estimate(
                        call.price.image_input_tokens
                    )
                    bound = CostBound(bound.fixed + token_output * call.price.image_output_per_m, 0)
                else:
                    call.image_price = media.image_price(call.price, payload)
                    bound = CostBound(bound.fixed + choices * call.image_price * MICRO, 0)
            elif by_tokens:  # a transcription priced by tokens (its entry sets both counts)
                # All the model may read, its context window, at the audio price (the dearer
                # input: the prompt's text shares that window), and all it may write: the worst
                # case until the answer reports its usage. (Not bounded by the upload's duration:
                # OpenAI publishes no audio tokens per second for these models.)
                call.input_bound = call.price.context_window or 0
                call.estimated_input = tokens.estimate_input(payload.get("prompt"))
                token_output = call.price.max_output_tokens or 0
                bound = CostBound(
                    call.input_bound * call.price.audio_input_per_m
                    + token_output * call.price.output_per_m,
                    0,
                )
            elif audio:  # the longest the upload may play, at the lowest bitrate of any format
                bound = CostBound(
                    bound.fixed + media.audio_cost(call.price, call.longest) * MICRO, 0
                )
            elif speech:  # the text it asks to speak, known up front: held at exactly its bill
                bound = CostBound(call.price.character_cost(call.characters) * MICRO, 0)
        except UnboundedInput as exc:
            if exc.carried:
                param, code = "previous_response_id", "unsupported_parameter"
            else:
                param, code = (
                    ("messages" if "messages" in payload else "input"),
                    "unsupported_file_input",
                )
            raise bad_request(str(exc), param=param, code=code) from None
        org = self.money.cached_org(key.org_id) or await self.money.org(key.org_id)
        scopes = self.rates.cached_scopes(key, org.tier, model) or await self.rates.scopes(
            key, org.tier, model
        )
        # No await from here to the journal: the admission is one step.
        now = self.clock.now()
        if token_output:  # (known up front, counted whole; the audio's tokens once reported)
            self._rate_limit(call, scopes, token_output, 1, False, now, images)
        else:
            self._rate_limit(call, scopes, wanted, choices, asked is None, now, images)
        try:
            rewrite = self._hold(
                call, call.price, org, payload, bound, fields, asked, wanted, choices, now
            )
        except BaseException:
            self.rates.settle(call.ticket, 0, now)  # refused before forwarding: no tokens used
            raise
        # From the hold on, every way out settles it: nothing may leave it in flight.
        try:
            if token_output:
                call.held_output = token_output
            # Used from here on: every check of the key passed, and it is forwarded (a refusal
            # for the rate limits or the money leaves the key's "Last used" as it was).
            self.auth.used(key, call.client_ip, now)
            if rewrite:
                body = orjson.dumps(payload)
            await self._forward(call, upstreams, body, headers, receive, send, client_wants_usage)
        finally:
            if not call.metered:  # an unexpected error or cancellation: settle conservatively
                if call.forwarded:
                    # With no answer yet (a shutdown's cancellation, say): the upstream goes on
                    # and bills it, so the most it may write is billed, as after a crash.
                    used, heard = _unanswered(call, call.held_output)
                    images, seconds, chars = _unanswered_media(call)
                    self._meter(call, 500, used, Outcome.UPSTREAM_BROKEN, estimated=True,
                                images=images, seconds=seconds, characters=chars,
                                media_input=heard)  # fmt: skip
                else:  # failed before it was sent: it costs nothing, and its hold is released
                    self._meter(call, 500, _NONE[0], Outcome.UPSTREAM_UNREACHABLE, estimated=False)

    async def stored_at(
        self, response_id: str, key: ApiKey
    ) -> tuple[StoredResponse, Upstream] | None:
        """A stored response of ``key``'s project and the upstream storing it, if still configured
        (None: another project's, unknown, or on an upstream gone from the settings)."""
        stored = await self.stored.owned(response_id, key)
        up = self.router.named(stored.upstream) if stored is not None else None
        return None if stored is None or up is None else (stored, up)

    async def _continued(self, call: Call, payload: dict[str, Any]) -> list[Upstream]:
        """The upstreams a Responses API request may go to: those serving its model, or, when it
        continues a stored response (``previous_response_id``), the one storing it, if this key's
        project created it (else "not found", as another organization's is at OpenAI)."""
        call.store = payload.get("store") is not False
        previous = payload.get("previous_response_id")
        if previous is None:
            return await self.router.candidates(call.model)
        found = await self.stored_at(previous, call.key)
        if found is None:
            raise previous_not_found(previous)
        stored, up = found
        if up not in await self.router.candidates(call.model):
            raise ApiError(
                404, f"The model `{call.model}` is not served where the previous response is "
                f"stored (upstream '{up.name}'): continue it with a model that upstream serves.",
                code="model_not_found", param="model",
            )  # fmt: skip
        call.stored_at, call.carried = up, stored.context_tokens
        return [up]

    def _rate_limit(
        self, call: Call, scopes: list[LimitScope], wanted: int, choices: int, uncapped: bool,
        now: float, images: int,
    ) -> None:  # fmt: skip
        """Counts the request, its estimated tokens, the ``images`` it asks for and the megabytes of
        audio it uploads against every scope: the prompt and the most it may write (``wanted`` for
        each of ``choices`` outputs), as OpenAI counts ``max_tokens`` up front; the settlement
        corrects the tokens to what was used. A request that sets no cap (``uncapped``) counts at
        most ``UNCAPPED_OUTPUT`` an output, and never more than the tightest TPM limit leaves after
        its prompt: counting a model's whole output cap (gpt-4.1's 32,768 against Tier 1's 30,000)
        refused it for ever, and reserving the whole limit made every concurrent request wait a
        minute. (Its money hold still covers all it may write; only the rate limit is counted this
        way.)"""
        output = wanted * choices
        if uncapped and output:
            output = min(output, UNCAPPED_OUTPUT * choices)
            room = _token_room(scopes) - call.estimated_input
            if 0 < room < output:
                output = room
        tokens = call.estimated_input + output
        audio_mb = media.audio_megabytes(call.audio_bytes)  # (0 but on speech to text)
        decision = self.rates.admit(scopes, tokens, now, images, audio_mb)
        call.rate_headers = rate_limit_headers(decision)
        call.ticket = decision.ticket
        if decision.rejection is not None:
            kind = "tokens" if decision.rejection.dimension is Dimension.TOKENS else "requests"
            message = rejection_message(call.model, call.key.org_id, decision)
            limit = ((b"x-keyplane-limit", b"rate"),)
            raise ApiError(429, message, type=kind, code="rate_limit_exceeded", extra_headers=limit)

    def _hold(
        self, call: Call, price: Price, org: OrgMoney, payload: dict[str, Any], bound: CostBound,
        fields: tuple[str, ...], asked: int | None, wanted: int, choices: int, now: float,
    ) -> bool:  # fmt: skip
        """Places the money hold for ``bound`` at ``price`` (the call's: an unpriced model was
        refused before); returns True when the payload now carries a lower output cap
        (``fields``/``asked``: the client's own cap, if any; ``wanted``: the cap per output the
        hold covers unless lowered; ``choices``: how many outputs)."""
        admission = self.money.admit(
            org, call.key, call.request_id, call.model, call.endpoint.name, bound, wanted, now
        )
        call.hold = admission.hold
        call.held_output = admission.output_tokens * choices
        # The upstream must not produce more than the hold covers: send the cap when it was lowered,
        # or when neither the client nor the price table bounds the output.
        if not call.endpoint.has_output or not (
            admission.clamped or (asked is None and price.max_output_tokens is None)
        ):
            return False
        if not fields:
            chat = call.endpoint.name == "chat.completions"
            fields = (price.output_param if chat else call.endpoint.caps[-1],)
        for field in fields:  # every cap the client sent: an upstream may obey either
            payload[field] = admission.output_tokens
        return True

    async def _forward(
        self, call: Call, upstreams: list[Any], body: bytes, headers: list[tuple[bytes, bytes]],
        receive: Receive, send: Send, client_wants_usage: bool,
    ) -> None:  # fmt: skip
        call.forwarded = True
        # (A speech's audio is relayed as it arrives, never read whole: an open answer, as a stream.)
        stream = call.stream or call.endpoint.audio_out
        try:  # (the router copies the headers it forwards)
            resp, content, up = await self.router.send(
                upstreams, call.endpoint.upstream_path, body, headers, stream=stream
            )
        except UpstreamUnavailable as exc:
            raise self._unavailable(call, exc) from None
        try:
            out_headers = self._response_headers(call, resp)
            if content is None:
                # (A speech's answer is passed on as it came, JSON instead of audio included.)
                if resp.status == 200 and (not _json_answer(resp) or call.endpoint.audio_out):
                    await self._stream(
                        call, resp, out_headers, receive, send, client_wants_usage, up
                    )
                    return
                # An error, or an upstream that ignored stream: true and answered JSON: read
                # whole, billed on its usage as any answer (not as a stream with no events).
                content = await self._read_rest(call, resp, up)
            if resp.status != 200:
                if resp.status < 400 or resp.status > 599:  # (204, 3xx, 999: not an answer)
                    self._meter(call, 502, (0, 0, 0), _COMPLETED, estimated=False)
                    raise ApiError(
                        502, f"The upstream answered HTTP {resp.status}, which answers no API "
                        "request.", type="server_error", code="upstream_error",
                    )  # fmt: skip
                self._meter(call, resp.status, (0, 0, 0), _COMPLETED, estimated=False)
                content = _in_envelope(resp.status, content, out_headers)
            elif call.endpoint.per_image:  # billed per image it made, or by the tokens reported
                made, reported = media.image_answer(content, call.choices)
                by_tokens = _image_tokens(call)
                # What the hold covers: what an answer that reports nothing usable is billed.
                held = (call.input_bound, 0, call.held_output) if by_tokens else (0, 0, 0)
                held_images = _held_image_input(call) if by_tokens else 0
                if made < 0:  # no list of images: the upstream may have made them all
                    self._meter(call, 502, held, Outcome.UPSTREAM_BROKEN, estimated=True,
                                images=call.choices, media_input=held_images)  # fmt: skip
                    raise ApiError(
                        502, "The upstream's answer was not a list of images.",
                        type="server_error", code="upstream_error",
                    )  # fmt: skip
                if not by_tokens:
                    self._meter(call, 200, (0, 0, 0), _COMPLETED, estimated=False, images=made)
                elif reported is None:
                    self._meter(call, 200, held, _COMPLETED, estimated=True, images=made,
                                media_input=held_images)  # fmt: skip
                else:
                    inp, image_input, out = reported
                    self._meter(call, 200, (inp, 0, out), _COMPLETED, estimated=False,
                                images=made, media_input=image_input)  # fmt: skip
            elif _audio_tokens(call):  # billed by the tokens its answer reports
                heard_tokens = media.transcription_usage(content)
                if heard_tokens is None:  # (a text answer, say): billed the hold, estimated
                    self._meter(call, 200, (call.input_bound, 0, call.held_output), _COMPLETED,
                                estimated=True, media_input=call.input_bound)  # fmt: skip
                else:
                    inp, audio_input, out = heard_tokens
                    self._meter(call, 200, (inp, 0, out), _COMPLETED, estimated=False,
                                media_input=audio_input)  # fmt: skip
            elif call.endpoint.audio_in:  # billed per second of audio the upstream reports
                said = media.reported_seconds(content)
                heard = said if said is not None else media.likely_seconds(call.audio_bytes)
                heard = min(heard, call.longest)  # (an upstream's wrong duration: at most the hold)
                self._meter(call, 200, (0, 0, 0), _COMPLETED, estimated=said is None,
                            seconds=heard)  # fmt: skip
            elif (answered := answer_usage(content)) is not None:
                used, audio = answered
                self._meter(call, 200, used, _COMPLETED, estimated=False, audio=audio)
            else:  # an answer with no usable usage is billed on estimates, as a stream would be
                out = estimated_output(content) if call.endpoint.has_output else 0
                if json_object(content) is None:  # (empty, cut, HTML...): no SDK could read it
                    used = (call.estimated_input, 0, out)
                    self._meter(call, 502, used, Outcome.UPSTREAM_BROKEN, estimated=True)
                    raise ApiError(
                        502, "The upstream's answer was not a JSON object.", type="server_error",
                        code="upstream_error",
                    )  # fmt: skip
                self._meter(call, 200, (call.estimated_input, 0, out), _COMPLETED, estimated=True)
            if resp.status == 200 and call.store:
                answer = json_object(content)
                if answer is not None and answer.get("store") is not False:
                    response_id = answer.get("id")
                    if isinstance(response_id, str) and response_id:
                        self.stored.note(response_id, call.key, up.name, call.used)
            await send_bytes(
                send, resp.status, content, out_headers[1:], content_type=out_headers[0][1]
            )
        finally:
            await resp.aclose()

    def _unavailable(self, call: Call, exc: UpstreamUnavailable) -> ApiError:
        """Meters a request no upstream answered usably; returns the error the client gets."""
        status = 504 if exc.timed_out else 503 if exc.busy else 502
        # A request that may have been processed upstream: bill its prompt, conservatively,
        # and the output an answer that broke off shows at least (the upstream wrote it all).
        out = estimated_output(exc.partial) if exc.partial and call.endpoint.has_output else 0
        # It may have made every image it asked for; an answer too large to read (more bytes than
        # keyplane holds) is billed all the output the hold covers, as any answer never read.
        if _image_tokens(call) or exc.too_large:
            out = call.held_output
        used, heard = _unanswered(call, out) if exc.reached else _NONE
        outcome = Outcome.UPSTREAM_UNREACHABLE
        if exc.partial or exc.too_large:
            outcome = Outcome.UPSTREAM_BROKEN
        images, seconds, chars = _unanswered_media(call) if exc.reached else (0, 0, 0)
        self._meter(call, status, used, outcome, estimated=exc.reached, images=images,
                    seconds=seconds, characters=chars, media_input=heard)  # fmt: skip
        advice = (
            ((b"retry-after", b"1"),) if exc.busy
            else ((b"x-should-retry", b"false"),) if exc.refused else ()
        )  # fmt: skip
        return ApiError(
            status, str(exc), type="server_error", code="upstream_error", extra_headers=advice
        )

    async def _read_rest(self, call: Call, resp: UpstreamResponse, up: Upstream) -> bytes:
        """The whole body of an answer to a streaming request that is not a stream (a JSON error,
        or JSON from an upstream that ignored stream: true); b"" if it broke off. Raises ApiError
        (metered) when it was too large to read."""
        try:
            return await self.router.read(resp, up)
        except UpstreamUnavailable as exc:
            if exc.too_large:
                raise self._unavailable(call, exc) from None
            return b""

    async def _stream(
        self, call: Call, resp: UpstreamResponse, headers: list[tuple[bytes, bytes]],
        receive: Receive, send: Send, client_wants_usage: bool, up: Upstream,
    ) -> None:  # fmt: skip
        responses, speech = call.endpoint.responses, call.endpoint.audio_out
        acc: SseAccounting = (
            AudioRelay()
            if speech
            else TranscriptAccounting()
            if call.endpoint.audio_in
            else SseAccounting(client_wants_usage=client_wants_usage, responses=responses)
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (b"cache-control", b"no-cache")],
            }
        )
        outcome = Outcome.COMPLETED
        # The stream is pumped in this task (a task of its own cost the first event a loop pass);
        # a small watcher cancels it if the client leaves, so the upstream stops generating.
        this = asyncio.current_task()
        assert this is not None
        left = False

        async def watch() -> None:
            nonlocal left
            await _wait_for_disconnect(receive)
            left = True
            this.cancel()

        watching = asyncio.create_task(watch())
        try:
            try:
                out = b""
                noted = not (responses and call.store)
                async for raw in resp.chunks():
                    out = acc.feed(raw)
                    if not noted and acc.response_id is not None:  # usable at once by its owner
                        self.stored.note(acc.response_id, call.key, up.name)
                        noted = True
                    if resp.drained:  # the rest is here: one last write ends the response
                        break
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    out = b""
                tail = out + acc.rest()
            except UpstreamError as exc:
                log.warning("upstream stream broke: %s", type(exc).__name__)
                outcome = Outcome.UPSTREAM_BROKEN
                if speech:  # audio has no in-band error: left unfinished, the connection is
                    return  # closed, and the client sees its answer cut short
                tail = error_event("The upstream stream broke before it finished.")
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            # The client left (or we are shutting down): bill what was produced so far.
            outcome = Outcome.CLIENT_DISCONNECTED
            if not left or this.uncancel() > 0:
                raise  # shutting down: the cancellation goes on
        except BaseException:
            outcome = Outcome.UPSTREAM_BROKEN
            raise
        finally:
            watching.cancel()
            if speech:  # the text it asked to speak, however much of the audio the client took
                self._meter(call, 200, (0, 0, 0), outcome, estimated=False,
                            characters=call.characters)  # fmt: skip
            elif isinstance(acc, TranscriptAccounting):  # its last event's usage, else the hold
                reported = acc.usage
                used, heard = (
                    (reported, acc.heard) if reported is not None else _unanswered(call, 0)
                )
                self._meter(call, 200, used, outcome, estimated=reported is None, media_input=heard)
            elif acc.usage is not None:
                self._meter(call, 200, acc.usage, outcome, estimated=False, audio=acc.audio)
            else:
                used = (call.estimated_input, 0, acc.estimated_output_tokens)
                self._meter(call, 200, used, outcome, estimated=True)
            if call.store and acc.response_id is not None:  # now with what continuing it adds
                self.stored.note(acc.response_id, call.key, up.name, call.used)

    async def _read_body(self, scope: Any, receive: Receive, allowed: int = 0) -> bytes:
        """The request's body, up to ``max_body_bytes`` (or ``allowed``, when larger: an
        endpoint taking files)."""
        limit = max(self.max_body_bytes, allowed)
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "The client disconnected before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _response_headers(self, call: Call, resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
        """Content type first, then our request id and rate-limit headers, then the few upstream
        headers a client may rely on."""
        content_type = b"application/json"
        out = [(b"x-request-id", call.request_id.encode()), *call.rate_headers]
        for name, value in resp.headers:
            if name == b"content-type":
                content_type = value
            elif name in _PASS_RESPONSE:
                out.append((name, value))
            elif name == b"x-request-id":
                out.append((b"x-upstream-request-id", value))
        out.insert(0, (b"content-type", content_type))
        return out

    def _meter(
        self,
        call: Call,
        status: int,
        used: tuple[int, int, int],
        outcome: Outcome,
        *,
        estimated: bool,
        images: int = 0,
        seconds: int = 0,
        characters: int = 0,
        media_input: int = 0,  # of the input tokens, those of images or audio (priced by tokens)
        audio: Audio = NO_AUDIO,  # of the tokens, the audio a chat model reported
    ) -> None:
        if call.metered or call.hold is None:
            return
        call.metered = True
        now = self.clock.now()
        inp, cached, out = used
        call.used = None if estimated else inp + out
        # Tokens beyond what the request could use (an upstream's wrong usage) are charged at
        # most the hold, and count at most that much against TPM limits too.
        self.rates.settle(call.ticket, min(inp, call.input_bound) + min(out, call.held_output), now)
        price = call.price
        if price is None:
            cost = 0
        elif _image_tokens(call):
            cost = price.image_token_cost(inp, media_input, out)
        elif _audio_tokens(call):
            cost = price.audio_token_cost(inp, media_input, out)
        else:
            if estimated and (call.heard or call.speaks):  # no usage: the audio as estimated
                audio = (min(call.heard, inp), out if call.speaks else 0)
            if audio[0] or audio[1]:  # at the audio prices (the text ones, if it has none)
                cost = price.chat_audio_cost(inp, cached, out, audio[0], audio[1])
                if not price.audio_input_per_m or not price.audio_output_per_m:
                    _unpriced_audio(price, audio)
            else:
                cost = price.token_cost(inp, cached, out)
        if images:
            cost += images * call.image_price
        if seconds and price:
            cost += media.audio_cost(price, seconds)
        if characters and price:
            cost += price.character_cost(characters)
        self.money.finish(
            call.hold,
            UsageRecord(
                request_id=call.request_id,
                created_at=int(now),
                org_id=call.key.org_id,
                project_id=call.key.project_id,
                key_id=call.key.id,
                owner_type=call.key.owner_type,
                owner_id=call.key.owner_id,
                model=call.model,
                endpoint=call.endpoint.name,
                input_tokens=inp,
                cached_input_tokens=cached,
                output_tokens=out,
                status=status,
                latency_ms=int((time.monotonic() - call.started) * 1000),
                client_ip=call.client_ip,
                cost_micro_usd=cost,
                stream=call.stream,
                outcome=outcome,
                tokens_estimated=estimated,
                period=call.hold.period,
                images=images,
                audio_seconds=seconds,
                characters=characters,
                input_audio_tokens=audio[0],
                output_audio_tokens=audio[1],
            ),
        )


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _in_envelope(status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An upstream's error answer as it came when it is OpenAI's error envelope, else (an HTML
    page from a proxy in front of it, plain text, nothing) that status in the envelope, so every
    client's SDK can read it. ``headers[0]``, the content type, is set to JSON then."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return content
    headers[0] = (b"content-type", b"application/json")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    message = f"The upstream answered {status} without an error in OpenAI's format."
    return orjson.dumps(ApiError(status, message, type=kind, code="upstream_error").body())


def _unpriced_audio(price: Price, audio: Audio) -> None:
    """Logs audio tokens an upstream reported on a model with no price for them (a request that
    sent or asked for audio was refused there): billed at the text prices, within the hold."""
    if (audio[0] and not price.audio_input_per_m) or (audio[1] and not price.audio_output_per_m):
        log.warning(
            "%s reported %d input and %d output audio tokens, and has no price for them: "
            "billed at its text prices", price.model, audio[0], audio[1],
        )  # fmt: skip


def _image_tokens(call: Call) -> bool:
    """Whether ``call`` is an image generation on a model priced by tokens (gpt-image-1)."""
    return call.endpoint.per_image and call.price is not None and bool(call.price.tokens_per_image)


def _held_image_input(call: Call) -> int:
    """Of the input tokens an image request's hold covers, those of the images it uploads."""
    return media.uploaded_image_tokens(call.price, call.images_in) if call.price else 0


def _audio_tokens(call: Call) -> bool:
    """Whether ``call`` is a transcription on a model priced by tokens (gpt-4o-transcribe)."""
    return call.endpoint.audio_in and call.price is not None and call.price.by_audio_tokens


_NONE = ((0, 0, 0), 0)


def _unanswered(call: Call, out: int) -> tuple[tuple[int, int, int], int]:
    """The tokens a request the upstream may have served without answering is billed, and how
    many of its input are audio: its prompt's estimate and ``out``; a transcription priced by
    tokens, its hold (all it may hear, counted as audio, and write)."""
    if _audio_tokens(call):
        return (call.input_bound, 0, call.held_output), call.input_bound
    if call.images_in and call.price is not None:  # (its images' share of the estimate)
        images = call.images_in * tokens.image_estimate(call.price.image_input_tokens)
        return (call.estimated_input, 0, out), images
    return (call.estimated_input, 0, out), 0


def _unanswered_media(call: Call) -> tuple[int, int, int]:
    """(images, seconds of audio, characters spoken) a request the upstream may have served
    without answering is billed: all the images it asked for; the audio's likely duration, at most
    what was held; all the text it asked to speak."""
    images = call.choices if call.endpoint.per_image else 0
    # (A transcription priced by tokens bills none: its hold's tokens are billed instead.)
    seconds = (
        0 if _audio_tokens(call) else min(media.likely_seconds(call.audio_bytes), call.longest)
    )
    return images, seconds, call.characters


def _upload(call: Call, body: bytes, content_type: bytes | None) -> tuple[bytes, dict[str, Any]]:
    """A multipart upload's body as it is forwarded and its fields, checked; what its hold needs
    of it (its audio's size and longest duration, or how many images it uploads) is set on
    ``call``. (Run on a worker thread: tens of megabytes.)"""
    if call.endpoint.audio_in:
        payload, call.audio_bytes, call.longest = media.audio_form(body, content_type)
        return body, payload
    edit = call.endpoint.name == "images.edits"
    default = call.endpoint.default_model or ""
    body, payload, call.images_in = media.image_form(body, content_type, default, edit)
    return body, payload


def _prompt_count(prompt: Any) -> int:
    """How many prompts a legacy completion's ``prompt`` holds: a list of strings or of token
    lists is one completion per item; a string or one token list is one."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _output_cap(
    payload: dict[str, Any], caps: tuple[str, ...]
) -> tuple[tuple[str, ...], int | None]:
    """The fields of ``caps`` that cap the output and the largest of their values (_parse checked
    them): with both, the upstream may obey either (OpenAI's chat takes ``max_completion_tokens``,
    its legacy completions ``max_tokens``, servers such as vLLM either)."""
    fields: tuple[str, ...] = ()
    asked: int | None = None
    for field in caps:  # (a loop, not generators: it runs for every request)
        value = payload.get(field)
        if value is not None:
            fields += (field,)
            asked = value if asked is None or value > asked else asked
    return fields, asked


def _json_answer(resp: UpstreamResponse) -> bool:
    """Whether an answer to a streaming request says it is JSON, not an event stream."""
    for name, value in resp.headers:
        if name == b"content-type":
            return value.startswith(b"application/json")
    return False


def _token_room(scopes: list[LimitScope]) -> int:
    """The tightest TPM limit of ``scopes`` (a very large number when none has one)."""
    room = 1 << 62
    for scope in scopes:
        tpm = scope.limits.tpm
        if tpm is not None and tpm < room:
            room = tpm
    return room


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
    )


def _parse(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """The fields of a JSON body (the upstream is sent them as keyplane read them, written back:
    canonical.py). Checks the few fields keyplane itself relies on; the upstream validates the
    rest."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            "(HINT: check the Content-Type and that the JSON is valid)."
        ) from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    check_fields(payload, "input" if endpoint.responses or endpoint.name == "moderations" else None)
    model = payload.get("model")
    if model is None and endpoint.default_model is not None:
        pass  # the endpoint's default model
    elif not isinstance(model, str) or not model.strip():
        raise bad_request("You must provide a model parameter (a non-empty string).", param="model")
    if model is not None and len(model) > 256:
        raise bad_request("The model name is too long.", param="model")
    if endpoint.required not in payload:
        raise bad_request(f"'{endpoint.required}' is a required property.", param=endpoint.required)
    if endpoint.name == "chat.completions" and not isinstance(payload["messages"], list):
        raise bad_request("'messages' must be an array of message objects.", param="messages")
    if (
        "stream" in payload
        and payload["stream"] is not None
        and not isinstance(payload["stream"], bool)
    ):
        raise bad_request("'stream' must be a boolean.", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", param="stream_options")
    if endpoint.responses:
        check_request(payload)
    for name in endpoint.caps:
        value = payload.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise bad_request(f"'{name}' must be a positive integer.", param=name)
    for name in ("n", "best_of"):  # how many outputs the upstream generates: the hold counts them
        value = payload.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CHOICES
        ):
            raise bad_request(f"'{name}' must be an integer from 1 to {MAX_CHOICES}.", param=name)
    return payload
