"""The worst-case cost of a request, computed before it is forwarded.

Input tokens are bounded by bytes: a BPE tokenizer never makes more tokens than the UTF-8 bytes it
reads, and a request's text (plus per-message framing) is a subset of its JSON body. Each image
adds the most one image costs on the model (``image_input_tokens`` in the price table, else
``IMAGE_TOKEN_ALLOWANCE``); inline base64 images are counted by that instead of by bytes. File parts
(PDFs) add the model's context window and ``MAX_FILE_PAGES`` page images, or are refused on a model
whose context window keyplane does not know.
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
    """An upper bound on the prompt tokens of a request body on ``price``'s model. ``carried``: the
    upstream also reads context the body does not hold (a Responses API request that continues a
    stored response): ``carried_tokens`` when known (the stored response's own input and output,
    as its upstream reported them: all it can carry over), else the model's context window."""
    images, image_bytes, files = _media(payload.get("messages"))
    more_images, more_bytes, more_files = _media(payload.get("input"))  # Responses, moderations
    images, image_bytes, files = images + more_images, image_bytes + more_bytes, files or more_files
    per_image = price.image_input_tokens or IMAGE_TOKEN_ALLOWANCE
    bound = max(body_len - image_bytes, 0) + images * per_image
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
    return bound


def _media(items: Any) -> tuple[int, int, bool]:
    """(images, bytes of the inline images' data, whether any file part) in chat ``messages`` or
    a Responses API ``input`` (items with ``content`` parts; a function call's ``output`` parts; or
    parts themselves, as a moderation's input). Any part naming an image or a file counts, whatever
    its ``type`` says: a bound may not miss one of the upstream's accepted forms (an image part
    naming a file id is an image)."""
    images = size = 0
    files = False
    if not isinstance(items, list):
        return 0, 0, False
    for item in items:
        if not isinstance(item, dict):
            continue
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
    return images, size, files


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


def cost_bound(price: Price, input_tokens: int, n: int = 1) -> CostBound:
    return CostBound(input_tokens * price.input_per_m, price.output_per_m * max(n, 1))
