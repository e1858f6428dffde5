"""What a person is told when a payment provider declines a charge: ``PaymentFailed``, the error a
purchase raises with the provider's decline code, and the sentence each code reads as (the Admin
API's error, the dashboard's form error and the auto-recharge emails say the same). Stripe's codes
are the vocabulary; the sandbox's test cards answer with the same ones."""

from __future__ import annotations

from keyplane.errors import KeyplaneError


class PaymentFailed(KeyplaneError):
    """The provider refused the charge; ``code`` is Stripe's decline code (``card_declined``…)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


_DECLINED = "Your card was declined."
_PLAIN_DECLINES = (
    "generic_decline", "do_not_honor", "lost_card", "stolen_card", "fraudulent", "pickup_card",
    "restricted_card", "card_velocity_exceeded", "card_not_supported",
)  # fmt: skip
_DECLINES = {
    "card_declined": _DECLINED,
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "authentication_required": (
        "Your card asks for 3-D Secure authentication, which a saved card charged without you "
        "cannot give: use another card."
    ),
    "processing_error": "The payment could not be processed, so nothing was credited.",
    # Stripe's decline codes that say no more than "declined" to the cardholder (as it advises
    # for lost, stolen or fraudulent cards).
    **dict.fromkeys(_PLAIN_DECLINES, _DECLINED),
}


def decline_message(code: str) -> str:
    return _DECLINES.get(code, "The payment could not be processed.")
