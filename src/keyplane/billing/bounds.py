"""The worst-case cost of a request, computed before it is forwarded.

Input tokens are bounded by bytes: a BPE tokenizer never makes more tokens than the UTF-8 bytes it
reads, and a request's text (plus per-message framing) is a subset of its JSON body. Each image
adds the most one image costs on the model (``image_input_tokens`` in the price table, else
``IMAGE_TOKEN_ALLOWANCE``); inline base64 images are counted by that instead of by bytes. File parts
(PDFs) add the model's context window and ``MAX_FILE_PAGES`` page images, or are refused on a model
whose context window keyplane does not know.
Audio (chat's ``input_audio`` parts) adds the tokens its data may play: its decoded length at the
lowest bitrate of any format the API reads (``MIN_AUDIO_BYTES_PER_S``) gives the most seconds, at
``AUDIO_TOKENS_PER_S``; an earlier answer's audio sent back by id (a message's ``audio``) the most
a model writes; all of it at most the model's context window. Those tokens cost the audio price.
Output tokens are bounded by ``max_tokens`` / ``max_completion_tokens`` (times ``n``), else by the
model's maximum output from the price table. When the money left cannot cover that, the gateway
lowers the output cap (``max_output_for``) and tells the upstream.
"""

from __future__ import annotations

from typing import Any, final

from keyplane.usage.pricing import MICRO, Price
from keyplane.usage.tokens import IMAGE_PARTS
from keyplane.values import Value

IMAGE_TOKEN_ALLOWANCE = 3000  # an image on a model whose price entry sets no image_input_tokens
MAX_FILE_PAGES = 100  # OpenAI reads at most 100 pages of files a request
# The fewest bytes a second of audio takes in any format the API reads (Opus at 6 kbit/s; chat
# reads wav and mp3, no lower): what bounds an audio file's duration, and so its hold.
MIN_AUDIO_BYTES_PER_S = 750
# A common bitrate (MP3 at 128 kbit/s): a duration estimate when the upstream reports none.
USUAL_AUDIO_BYTES_PER_S = 16_000
# Audio tokens a second: OpenAI counts 10 for audio a user sends (one per 100 ms) and 20 for its
# models' own (one per 50 ms, which a conversation may send back); a hold counts the more, an
# estimate the fewer.
AUDIO_TOKENS_PER_S = 20
LIKELY_AUDIO_TOKENS_PER_S = 10
# The audio an earlier answer sent back by id may hold, on a model whose price entry sets no
# max_output_tokens (a model priced by audio tokens sets it).
AUDIO_REPLY_TOKENS = 16384
NO_LIMIT = 2**62
MAX_AMOUNT = 10**15  # micro-dollars ($1B) any amount typed may be: a typo guard, inside BIGINT


@final
class CostBound(Value):
    """Cost of a request as a function of its output tokens, in micro-dollars times 10**6 (exact)."""

    FIELDS = ("fixed", "per_output")
    __slots__ = FIELDS

    def __init__(self, fixed: int, per_output: int) -> None:
        self.fixed = fixed  # input bound * input price
        self.per_output = per_output  # output price * n

    def cost(self, output_tokens: int) -> int:
        return -(-(self.fixed + self.per_output * output_tokens) // MICRO)

    def max_output_for(self, money: int) -> int:
        """Returns the most output tokens ``money`` micro-dollars cover (-1: not even the input)."""
        room = money * MICRO - self.fixed
        if room < 0:
            return -1
        return NO_LIMIT if self.per_output == 0 else room // self.per_output


class UnboundedInput(ValueError):
    """A request whose input no bound covers (a file part, or a continued stored response, on a
    model without a context window); ``carried``: the stored response is what cannot be bounded."""

    def __init__(self, message: str, *, carried: bool = False) -> None:
        super().__init__(message)
        self.carried = carried


def input_token_bound(
    body_len: int, payload: dict[str, Any], price: Price, *, carried: bool = False,
    carried_tokens: int | None = None,
) -> int:  # fmt: skip
    """An upper bound on the prompt tokens of a request body on ``price``'s model (``input_bounds``
    tells which of them may be audio)."""
    return input_bounds(body_len, payload, price, carried=carried, carried_tokens=carried_tokens)[0]


def input_bounds(
    body_len: int, payload: dict[str, Any], price: Price, *, carried: bool = False,
    carried_tokens: int | None = None,
) -> tuple[int, int, int]:  # fmt: skip
    """An upper bound on the prompt tokens of a request body on ``price``'s model; of those, the
    most that may be audio (0: the request sends none), and how many audio tokens it likely has
    (an estimate, for the rate limits and a bill with no usage). ``carried``: the upstream also
    reads context the body does not hold (a Responses API request that continues a stored
    response): ``carried_tokens`` when known (the stored response's own input and output, as its
    upstream reported them: all it can carry over), else the model's context window."""
    found = _media(payload.get("messages"))
    more = _media(payload.get("input"))  # Responses, moderations
    images, image_bytes, files = found[0] + more[0], found[1] + more[1], found[2] or more[2]
    per_image = price.image_input_tokens or IMAGE_TOKEN_ALLOWANCE
    bound = max(body_len - image_bytes, 0) + images * per_image
    audio = likely = 0
    if found[5] or more[5] or found[3] or more[3]:  # (audio: its data is no text but audio)
        bound = max(bound - found[4] - more[4], 0)
        audio, likely = _audio_bound(
            found[5] + more[5], found[6] + more[6], found[3] + more[3], price
        )
        bound += audio
    if carried and carried_tokens is not None:
        bound += min(carried_tokens, price.context_window or carried_tokens)
        carried = False
    if files or carried:
        window = price.context_window
        if window is None:
            what = "file inputs" if files else "previous_response_id"
            raise UnboundedInput(
                f"The model '{price.model}' cannot take {what} here: keyplane cannot bound "
                "what they cost without the model's context window (an operator sets "
                "context_window in its price entry).",
                carried=not files,
            )
        if carried:  # the stored conversation: at most what the model reads
            bound += window
        if files:  # a file's text is read into the context; each page may also be read as an image
            bound += window + MAX_FILE_PAGES * per_image
    return bound, audio, likely


def _audio_bound(longest: int, seconds: int, replies: int, price: Price) -> tuple[int, int]:
    """The most audio tokens, and the likely ones, of audio parts that may play ``longest``
    seconds and likely play ``seconds`` and of ``replies`` earlier answers' audio sent back by id,
    on ``price``'s model: each reply at most what the model writes, and in all at most what the
    model reads."""
    most = longest * AUDIO_TOKENS_PER_S
    likely = seconds * LIKELY_AUDIO_TOKENS_PER_S
    reply = price.max_output_tokens or AUDIO_REPLY_TOKENS
    most += replies * reply
    likely += replies * (reply // 8 or 1)  # (a reply's audio: some of all it could have been)
    window = price.context_window
    if window is not None:
        most, likely = min(most, window), min(likely, window)
    return most, likely


def _media(items: Any) -> tuple[int, int, bool, int, int, int, int]:
    """(images, bytes of the inline images' data, whether any file part, audio sent back by id,
    characters of the audio parts' data, the most seconds and the likely seconds they play) in
    chat ``messages`` or a Responses API ``input`` (items with ``content`` parts; a function call's
    ``output`` parts; or parts themselves, as a moderation's input). Any part naming an image, a
    file or audio counts, whatever its ``type`` says: a bound may not miss one of the upstream's
    accepted forms (an image part naming a file id is an image). The audio sent back by id is a
    message's ``audio`` (an assistant's earlier answer: ``{"id": …}``). An audio part plays at
    least a second; its data, base64, decodes to 3 bytes every 4 characters."""
    images = size = replies = audio_chars = longest = seconds = 0
    files = False
    if not isinstance(items, list):
        return 0, 0, False, 0, 0, 0, 0
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("audio") is not None:
            replies += 1
        output = item.get("output")  # a call's output: parts, or one (a computer's screenshot)
        for parts in (
            item.get("content"),
            [output] if isinstance(output, dict) else output,
            [item],
        ):
            if not isinstance(parts, list):
                continue
            for part in parts:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if type(kind) is not str:  # (an array or an object: unhashable, and no kind)
                    kind = None
                image = kind in IMAGE_PARTS or not _IMAGE_KEYS.isdisjoint(part)
                if kind in _FILE_PARTS or (not image and not _FILE_KEYS.isdisjoint(part)):
                    files = True
                if image:
                    images += 1
                    size += _inline_size(part)
                if "input_audio" in part or (kind is not None and kind == "input_audio"):
                    chars = _audio_chars(part)
                    audio_chars += chars
                    decoded = -(-chars * 3 // 4)
                    longest += max(1, -(-decoded // MIN_AUDIO_BYTES_PER_S))
                    seconds += max(1, -(-decoded // USUAL_AUDIO_BYTES_PER_S))
    return images, size, files, replies, audio_chars, longest, seconds


def _audio_chars(part: dict[str, Any]) -> int:
    """Characters of an audio part's data (base64: ``input_audio.data``)."""
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else audio
    return len(data) if isinstance(data, str) else 0


def _inline_size(part: dict[str, Any]) -> int:
    """Bytes of an image part's inline data (a ``data:`` URL or bare base64)."""
    image = part.get("image_url", part.get("image"))
    data = image.get("url") if isinstance(image, dict) else image
    if isinstance(data, str) and (data.startswith("data:") or "image_url" not in part):
        return len(data)
    return 0


_IMAGE_KEYS = frozenset({"image_url", "image"})
_FILE_PARTS = frozenset({"file", "input_file"})
_FILE_KEYS = frozenset({"file", "file_id", "file_data", "file_url"})


def cost_bound(
    price: Price, input_tokens: int, n: int = 1, audio_input: int = 0, speaks: bool = False
) -> CostBound:
    """The cost of ``input_tokens`` (``audio_input`` of them audio, at the audio input price) and
    of each output token of ``n`` outputs (that may be audio when the request ``speaks``: at the
    dearer of the output prices)."""
    if not audio_input and not speaks:
        return CostBound(input_tokens * price.input_per_m, price.output_per_m * max(n, 1))
    heard_rate = max(price.audio_input_per_m, price.input_per_m)
    fixed = (input_tokens - audio_input) * price.input_per_m + audio_input * heard_rate
    output_rate = (
        max(price.audio_output_per_m, price.output_per_m) if speaks else price.output_per_m
    )
    return CostBound(fixed, output_rate * max(n, 1))
