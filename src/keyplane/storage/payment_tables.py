"""Payment methods and the charges made with them (the billing history). A method keeps only what
identifies it to a person (brand, last four digits, expiry) and to its provider (a reference):
never a card number or a CVC."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table, Text

from keyplane.storage.tables import metadata

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("provider", String(20), nullable=False),
    Column("provider_ref", String(255), nullable=False),
    Column("brand", String(20), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("exp_month", Integer, nullable=False),
    Column("exp_year", Integer, nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("removed_at", BigInteger),
    Index("ix_payment_methods_org_id", "org_id"),
)

payments = Table(
    "payments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("kind", String(10), nullable=False),  # purchase | recharge
    Column("amount_micro", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # succeeded | failed
    Column("method_id", String(40), nullable=False),
    Column("brand", String(20), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("failure", String(40)),  # the provider's decline code
    Column("lot_id", String(40)),  # the credit lot a successful charge bought
    Column("created_at", BigInteger, nullable=False),
    Column("provider_ref", String(255)),  # the provider's id of the payment (Stripe: pi_…)
    # The billing address when the payment was made (JSON, billing/address.py), which its receipt
    # shows; NULL: none was given (or the payment is older than billing addresses).
    Column("billed_to", Text),
    Index("ix_payments_org_created", "org_id", "created_at"),
    # One line a lot, whoever records it (the charging run, its retry, the provider's webhook);
    # a failed charge has none (NULLs are distinct in a unique index, SQLite's and PostgreSQL's).
    Index("ix_payments_lot_id", "lot_id", unique=True),
    # (The provider's reports of refunds and disputes name the payment by it.)
    Index("ix_payments_provider_ref", "provider_ref"),
)

# What became of a paid charge since, as the payment provider reports it (billing/reversals.py):
# each row is one of its events that changed keyplane's view of a refund or a dispute, with the
# credit it moved (its ledger entries' transaction is the row's id). Append-only, like the ledger.
payment_adjustments = Table(
    "payment_adjustments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("payment_id", String(40), ForeignKey("payments.id"), nullable=False),
    Column("kind", String(10), nullable=False),  # refund | dispute
    Column("ref", String(255), nullable=False),  # the provider's: the charge (ch_…), dispute (du_…)
    # The provider's event (Stripe: evt_…): each changes the ledger once, however often it comes.
    Column("event_id", String(255), nullable=False, unique=True),
    # refund: "refunded" | "partially_refunded" | "refund_failed"; dispute: the provider's status
    Column("status", String(30), nullable=False),
    # refund: the charge's amount refunded so far; dispute: the amount disputed
    Column("total_micro", BigInteger, nullable=False),
    Column("amount_micro", BigInteger, nullable=False),  # the credit moved: < 0 taken, > 0 given
    Column("created_at", BigInteger, nullable=False),
    Index("ix_payment_adjustments_payment", "payment_id"),
    Index("ix_payment_adjustments_org_created", "org_id", "created_at"),
)
