"""Money tables: credit lots and the append-only ledger, holds, budgets, alerts, idempotency."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table, Text

from keyplane.storage.tables import metadata

org_billing = Table(
    "org_billing",
    metadata,
    Column("org_id", String(40), ForeignKey("organizations.id"), primary_key=True),
    Column("mode", String(10), nullable=False),
    Column("tier", String(40)),  # usage tier id (limits/tiers.toml); NULL: the lowest
    Column("usage_limit_micro", BigInteger),  # NULL: the tier's monthly usage limit
    Column("budget_micro", BigInteger),  # NULL: no monthly budget
    Column("auto_recharge", Boolean, nullable=False, default=False),
    Column("recharge_threshold_micro", BigInteger),
    Column("recharge_target_micro", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
    Column("billing_email", String(254)),  # NULL: billing emails go to the Owners
    Column("billing_address", Text),  # JSON (billing/address.py); NULL: none given
    # The low-balance alert (billing/low_balance.py): its threshold (NULL: off), and its arming:
    # an id while the next fall under the threshold is to be emailed (the email's dedupe key),
    # NULL once it was (until the balance is back at or above the threshold).
    Column("low_balance_alert_micro", BigInteger),
    Column("low_balance_armed", String(40)),
)

project_budgets = Table(
    "project_budgets",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id"), primary_key=True),
    Column("org_id", String(40), nullable=False),
    Column("budget_micro", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

spend_alerts = Table(
    "spend_alerts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("project_id", String(40)),  # NULL: the whole organization
    Column("threshold_micro", BigInteger, nullable=False),
    Column("recipients", Text),  # JSON list; NULL: the organization's Owners
    Column("created_at", BigInteger, nullable=False),
    Index("ix_spend_alerts_org", "org_id"),
)

# Settled spend per organization, month and project ("" for none): the sum of the usage records'
# costs, kept by the settlement writer in the same transaction as the records. A month's spend is
# then a row per project; summing the month's usage records took ~0.45 s at a million of them.
spend_totals = Table(
    "spend_totals",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("project_id", String(40), primary_key=True),
    Column("charged_micro", BigInteger, nullable=False),
)

# Each ledger account's balance per organization (and lot, "" for none): the sum of its ledger
# entries, kept by every writer of entries in the same transaction. A lot's remaining credit and
# an organization's all-time spend are then one row each; the ledger grows by a few entries per
# settlement batch for ever (tens of millions a month under steady load), too many to sum on read.
ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("account", String(20), primary_key=True),
    Column("lot_id", String(40), primary_key=True),
    Column("amount_micro", BigInteger, nullable=False),
)

credit_lots = Table(
    "credit_lots",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("kind", String(10), nullable=False),  # purchase | grant
    Column("amount_micro", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("note", String(500), nullable=False, default=""),
    Column("revoked_at", BigInteger),
    # Credit taken off the lot by refunds and disputes of purchases, and moved by debt repayments,
    # net: the sum of its ledger entries of those (``Lot.adjusted``), kept with them in the same
    # transaction, so that a gateway can apply a change of it to its own books idempotently.
    Column("adjusted_micro", BigInteger, nullable=False, server_default="0"),
    Index("ix_credit_lots_org", "org_id"),
)

# Double-entry and append-only: every transaction's entries sum to zero; nothing is ever updated.
# Accounts: "lot" (with lot_id), "grants", "purchases", "usage", "receivable", "refunds",
# "disputes" (credit a refund or a dispute of a purchase took back, billing/reversals.py).
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", String(64), nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("account", String(20), nullable=False),
    Column("lot_id", String(40)),
    Column("amount_micro", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_ledger_entries_lot", "lot_id"),
    Index("ix_ledger_entries_org", "org_id"),
    Index("ix_ledger_entries_txn", "txn_id"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),  # the request id
    Column("org_id", String(40), nullable=False),
    Column("project_id", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("amount_micro", BigInteger, nullable=False),
    Column("period", String(7), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # open | settled | voided
    Column("charged_micro", BigInteger),
    Column("resolved_at", BigInteger),
    Index("ix_holds_open", "status", "org_id"),
)

# The gateway processes placing holds on this database: each says it is alive at every sweep
# (``seen_at``); holds stored open that were placed before every live gateway started belong to a
# dead one, and are settled at once instead of at their expiry.
gateways = Table(
    "gateways",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("seen_at", BigInteger, nullable=False),
)

# Change feed for money settings and lots written by other processes (CLI, Admin API).
money_events = Table(
    "money_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(40), nullable=False),
    # lot_added | lot_revoked | settings | lots_adjusted (refunds, disputes: ``Lot.adjusted``)
    Column("kind", String(20), nullable=False),
    Column("ref", String(40)),
    Column("at", BigInteger, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(80), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

recharge_jobs = Table(
    "recharge_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False),
    # Set while the job is pending, NULL after: the unique constraint allows one pending job per
    # organization, so a recharge is enqueued exactly once however many requests see the crossing.
    Column("pending_org_id", String(40), unique=True),
    Column("target_micro", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("attempts", Integer, nullable=False, server_default="0"),  # declined charges so far
    Column("due_at", BigInteger),  # NULL: at once; after a decline, when to try again
    Column("claimed_until", BigInteger),  # the process working it holds it until then
)
