"""Admin API request and response bodies, in OpenAI's shapes (not domain objects, not tables).

Money crosses this boundary as integers only: micro-dollars for keyplane's own fields
(``*_micro_usd``), cents where OpenAI's API uses cents (``threshold_amount`` of spend limits and
alerts). One cent is 10,000 micro-dollars. Money fields are strict integers, so ``10.5`` or
``"10"`` is refused rather than silently converted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Secret, StringConstraints, field_validator

from keyplane.billing.bounds import MAX_AMOUNT
from keyplane.billing.wallet import Lot
from keyplane.errors import InvalidRequest
from keyplane.usage.pricing import MICRO_PER_CENT

MAX_CENTS = MAX_AMOUNT // MICRO_PER_CENT
MAX_MICRO = MAX_AMOUNT
DEFAULT_GRANT_EXPIRY_S = 365 * 86400
MAX_GRANT_EXPIRY_S = 10 * 365 * 86400

Cents = Annotated[int, Field(strict=True, ge=0, le=MAX_CENTS)]
PositiveCents = Annotated[int, Field(strict=True, gt=0, le=MAX_CENTS)]
Micro = Annotated[int, Field(strict=True, ge=0, le=MAX_MICRO)]
T = TypeVar("T")


def cents_to_micro(cents: int) -> int:
    return cents * MICRO_PER_CENT


def micro_to_cents(micro: int) -> int:
    """Whole cents, rounded down (amounts set elsewhere, e.g. the CLI, may carry sub-cent parts)."""
    return micro // MICRO_PER_CENT


class Request(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be ignored on a money setting. Their
    text refuses U+0000 anywhere, on either database (PostgreSQL's text cannot hold it)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("Text cannot contain the NUL character (U+0000).")
        return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class MonthlyUsd(Request):
    currency: str = "USD"
    interval: str = "month"

    @field_validator("currency")
    @classmethod
    def _usd(cls, value: str) -> str:
        if value.upper() != "USD":
            raise ValueError("Only USD is supported.")
        return "USD"

    @field_validator("interval")
    @classmethod
    def _month(cls, value: str) -> str:
        if value != "month":
            raise ValueError("Only the calendar-month interval ('month', UTC) is supported.")
        return value


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """Every error the Admin API answers, in OpenAI's format."""

    error: ErrorDetail


# -- pages ----------------------------------------------------------------------------------------
class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


def page(
    items: Sequence[T], id_of: Callable[[T], str], *, limit: int, after: str | None,
    before: str | None = None,
) -> ListPage[T]:  # fmt: skip
    """Cursor pagination as OpenAI does it: ``after`` is the last id of the previous page, and
    ``before`` the first id of the next one: the page is then the ``limit`` objects just before
    it (with both, those between the two, from ``after`` on). ``has_more`` says whether more objects
    lie the way the page went: past its end, or, for a page taken ``before`` alone, before its
    start (as the audit log's ``before``)."""
    ids = [id_of(item) for item in items] if after is not None or before is not None else []
    start, end = 0, len(items)
    if after is not None:
        start = _position(ids, after, "after") + 1
    if before is not None:
        end = _position(ids, before, "before")
    if before is not None and after is None:
        first = max(start, end - limit)
        chunk, has_more = list(items[first:end]), first > start
    else:
        chunk, has_more = list(items[start : min(end, start + limit)]), start + limit < end
    return ListPage[T](
        data=chunk,
        first_id=id_of(chunk[0]) if chunk else None,
        last_id=id_of(chunk[-1]) if chunk else None,
        has_more=has_more,
    )


def _position(ids: list[str], cursor: str, param: str) -> int:
    if cursor not in ids:
        verb = "continue after" if param == "after" else "end before"
        raise InvalidRequest(f"No object '{cursor}' to {verb}.", param=param)
    return ids.index(cursor)


# -- credits --------------------------------------------------------------------------------------
class CreditGrant(BaseModel):
    object: Literal["organization.credit_grant"] = "organization.credit_grant"
    id: str
    kind: Literal["grant", "purchase"]
    amount_micro_usd: int
    remaining_micro_usd: int
    created_at: int
    expires_at: int | None
    revoked: bool
    note: str

    @classmethod
    def of(cls, lot: Lot, note: str) -> CreditGrant:
        return cls(
            id=lot.id,
            kind="purchase" if lot.kind == "purchase" else "grant",
            amount_micro_usd=lot.amount,
            remaining_micro_usd=lot.remaining,
            created_at=lot.created_at,
            expires_at=lot.expires_at,
            revoked=lot.revoked,
            note=note,
        )


class CreditGrantCreate(Request):
    amount_micro_usd: Annotated[int, Field(strict=True, gt=0, le=MAX_MICRO)]
    expires_in_seconds: Annotated[int, Field(strict=True, gt=0, le=MAX_GRANT_EXPIRY_S)] | None = (
        Field(default=DEFAULT_GRANT_EXPIRY_S, description="null: the grant never expires.")
    )
    note: Annotated[str, Field(max_length=500)] = ""


class CreditBalance(BaseModel):
    object: Literal["organization.credit_balance"] = "organization.credit_balance"
    available_micro_usd: int
    held_micro_usd: int
    spent_micro_usd: int
    lots: list[CreditGrant]


# -- spend limits ---------------------------------------------------------------------------------
class SpendLimitSet(MonthlyUsd):
    threshold_amount: Cents = Field(description="The monthly hard limit, in cents.")


class Enforcement(BaseModel):
    status: Literal["inactive", "enforcing"]


SpendLimitKind = Literal["organization.spend_limit", "organization.project.spend_limit"]


class SpendLimit(BaseModel):
    object: SpendLimitKind
    currency: Literal["USD"] = "USD"
    interval: Literal["month"] = "month"
    threshold_amount: int | None = Field(description="In cents; null: no limit.")
    enforcement: Enforcement


# -- spend alerts ---------------------------------------------------------------------------------
class EmailChannelIn(Request):
    type: Literal["email"] = "email"
    recipients: Annotated[list[Annotated[str, Field(max_length=254)]], Field(max_length=50)] = []


class SpendAlertCreate(MonthlyUsd):
    threshold_amount: PositiveCents = Field(description="Email when monthly spend reaches it.")
    notification_channel: EmailChannelIn | None = Field(
        default=None, description="Recipients default to the organization's Owners."
    )


class EmailChannel(BaseModel):
    type: Literal["email"] = "email"
    recipients: list[str]


class SpendAlert(BaseModel):
    object: Literal["organization.spend_alert"] = "organization.spend_alert"
    id: str
    currency: Literal["USD"] = "USD"
    interval: Literal["month"] = "month"
    threshold_amount: int
    project_id: str | None
    notification_channel: EmailChannel


class Deleted(BaseModel):
    object: str
    id: str
    deleted: Literal[True] = True


# -- billing settings -----------------------------------------------------------------------------
class AutoRecharge(BaseModel):
    enabled: bool
    threshold_micro_usd: int | None
    target_micro_usd: int | None


class BillingAddress(BaseModel):
    """The address receipts are billed to (``country``: ISO 3166-1 alpha-2)."""

    name: str
    line1: str
    line2: str
    city: str
    state: str
    postal_code: str
    country: str
    tax_id: str


class BillingSettings(BaseModel):
    object: Literal["organization.billing_settings"] = "organization.billing_settings"
    mode: Literal["prepaid", "postpaid"]
    usage_limit_micro_usd: int
    auto_recharge: AutoRecharge
    billing_email: str | None = Field(
        description="Where billing emails go; null: to the organization's Owners."
    )
    billing_address: BillingAddress | None
    low_balance_alert_micro_usd: int | None = Field(
        description="The billing email (else the Owners) is emailed once each time the credit "
        "balance falls below this amount, and the billing.low_balance webhook event sent; null: off."
    )
    currency: Literal["usd"] = Field(default="usd", description="keyplane bills in US dollars.")


class AutoRechargeUpdate(Request):
    enabled: bool | None = None
    threshold_micro_usd: Micro | None = None
    target_micro_usd: Micro | None = None


class BillingAddressUpdate(Request):
    """Lengths and characters are checked by the billing service (``billing/address.py``)."""

    name: str = ""
    line1: str = ""
    line2: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    tax_id: str = ""


class BillingSettingsUpdate(Request):
    """Only the fields present change; ``usage_limit_micro_usd: null`` restores the usage tier's
    limit."""

    mode: Literal["prepaid", "postpaid"] | None = None
    usage_limit_micro_usd: Micro | None = None
    auto_recharge: AutoRechargeUpdate | None = None
    billing_email: str | None = Field(
        default=None, description='Where billing emails go; null or "": to the Owners.'
    )
    billing_address: BillingAddressUpdate | None = Field(
        default=None,
        description="The whole address (it replaces the one set); null removes it. Required: "
        "country, line1, city.",
    )
    low_balance_alert_micro_usd: Micro | None = Field(
        default=None,
        description="Email when the credit balance falls below this amount: $1 to $100,000 in "
        "whole cents (a multiple of 10000); null turns the alert off.",
    )


# -- payments -------------------------------------------------------------------------------------
class Card(Request):
    """A card as typed into a form, for the payment provider only: never stored, logged or echoed.
    The number and CVC are ``Secret`` (``**********`` in a repr or a dump), and a validation error
    names the field, never its value."""

    number: Secret[Annotated[str, StringConstraints(min_length=1, max_length=30)]]
    exp_month: Annotated[int, Field(strict=True, ge=0, le=99)]
    exp_year: Annotated[int, Field(strict=True, ge=0, le=9999)]
    cvc: Secret[Annotated[str, StringConstraints(min_length=1, max_length=10)]]


class PaymentMethodCreate(Request):
    """One of the two, as the payment provider takes cards: ``card`` (the sandbox) or
    ``payment_method`` (Stripe, which never lets card details reach keyplane)."""

    card: Card | None = Field(default=None, description="The card's details (the sandbox).")
    payment_method: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = Field(
        default=None,
        description="A Stripe PaymentMethod id (pm_…) that Stripe.js created (Stripe).",
    )
    default: bool = Field(default=True, description="Make it the method purchases charge.")


class PaymentMethod(BaseModel):
    object: Literal["payment_method"] = "payment_method"
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool
    created_at: int


class CreditPurchaseCreate(Request):
    amount_micro_usd: Annotated[int, Field(strict=True, gt=0, le=MAX_MICRO)] = Field(
        description="Whole cents, within the configured bounds ($5-$100 by default)."
    )
    payment_method: Annotated[str, Field(max_length=100)] | None = Field(
        default=None, description="A payment method id; null: the default one."
    )


class CreditPurchase(BaseModel):
    """A charge, successful or declined: a line of the billing history."""

    object: Literal["credit_purchase"] = "credit_purchase"
    id: str
    kind: Literal["purchase", "recharge"] = Field(description="recharge: by auto-recharge.")
    amount_micro_usd: int
    status: Literal["succeeded", "failed"]
    payment_method: str
    brand: str
    last4: str
    failure_code: str | None = Field(description="The decline code, e.g. card_declined.")
    credit_grant_id: str | None = Field(description="The credit lot a successful charge bought.")
    created_at: int
    provider_payment_id: str | None = Field(
        description="The payment provider's id of the charge, for its support (Stripe: the "
        "PaymentIntent, pi_…); null when it made none (the sandbox provider, Stripe unreachable).",
    )
    amount_refunded_micro_usd: int = Field(
        description="How much of the charge was refunded so far (a refund that failed does not "
        "count); its credit was taken back. 0: none, amount_micro_usd: refunded in full."
    )
    dispute_status: str | None = Field(
        description="Where the cardholder's dispute of the charge with their bank stands, as the "
        "payment provider names it: needs_response or under_review (open: the amount disputed "
        "is withheld from the credit balance), won (given back), lost (kept), or an inquiry that "
        "withholds nothing (warning_needs_response, warning_under_review, warning_closed); null: "
        "never disputed."
    )
