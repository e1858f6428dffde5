"""The worst-case cost of a request, computed before it is forwarded.

Input tokens are bounded by bytes: a BPE tokenizer never makes more tokens than the UTF-8 bytes it
reads, and a request's text (plus per-message framing) is a subset of its JSON body. Images sent by
URL add a fixed allowance; inline base64 images are counted by that allowance instead of by bytes.
Output tokens are bounded by ``max_tokens`` / ``max_completion_tokens`` (times ``n``), else by the
model's maximum output from the price table. When the money left cannot cover that, the gateway
lowers the output cap (``max_output_for``) and tells the upstream.
"""

from __future__ import annotations

from typing import Any, final

from keyplane.usage.pricing import MICRO, Price
from keyplane.values import Value

IMAGE_TOKEN_ALLOWANCE = 3000
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


def input_token_bound(body_len: int, payload: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens of a request body."""
    images, image_bytes = _images(payload.get("messages"))
    return max(body_len - image_bytes, 0) + images * IMAGE_TOKEN_ALLOWANCE


def _images(messages: Any) -> tuple[int, int]:
    count = size = 0
    if not isinstance(messages, list):
        return 0, 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                count += 1
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if isinstance(url, str) and url.startswith("data:"):
                    size += len(url)
    return count, size


def cost_bound(price: Price | None, input_tokens: int, n: int = 1) -> CostBound:
    if price is None:
        return CostBound(0, 0)
    return CostBound(input_tokens * price.input_per_m, price.output_per_m * max(n, 1))
