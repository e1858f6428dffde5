"""The rules of refunds and disputes (billing/reversals.py): what each report changes, from which
lots credit is taken and to which it is given back, how a new lot pays a debt, and how the
gateway's books count a lot below zero."""

from __future__ import annotations

from keyplane.billing.payment_ports import Adjustment, ProviderReport
from keyplane.billing.reversals import decide, give_back, repay, standing, take
from keyplane.billing.wallet import Lot, OrgMoney

USD = 1_000_000
NOW = 1_800_000_000


def lot(lot_id: str, remaining: int, *, expires: int | None = NOW + 1000, amount: int = 0) -> Lot:
    return Lot(lot_id, "purchase", amount or max(remaining, 0), remaining, NOW - 100, expires)


def adjustment(kind: str, ref: str, amount: int, status: str, total: int = 0) -> Adjustment:
    return Adjustment(
        f"adj_{ref}_{status}", "org", "pay_1", kind, ref, f"evt_{ref}_{status}", status, total,
        amount, NOW,
    )  # fmt: skip


def refund(total: int | None) -> ProviderReport:
    return ProviderReport("evt_x", "refund", "pi_1", "ch_1", total)


def dispute(status: str, amount: int = 10 * USD) -> ProviderReport:
    return ProviderReport("evt_y", "dispute", "pi_1", "du_1", amount, status)


def test_a_refund_moves_the_difference_from_what_refunds_took_already() -> None:
    assert decide(refund(3 * USD), [], 10 * USD) == (3 * USD, "partially_refunded", 3 * USD)
    took = [adjustment("refund", "ch_1", -5 * USD, "partially_refunded", 5 * USD)]
    assert decide(refund(5 * USD), took, 10 * USD) is None  # the same total: nothing
    assert decide(refund(3 * USD), took, 10 * USD) == (-2 * USD, "refund_failed", 3 * USD)
    assert decide(refund(10 * USD), took, 10 * USD) == (5 * USD, "refunded", 10 * USD)
    assert decide(refund(None), took, 10 * USD) is None  # (the provider was not asked)


def test_a_dispute_moves_forward_only_and_holds_its_amount_while_open_or_lost() -> None:
    assert decide(dispute("warning_needs_response"), [], 10 * USD) == (
        0, "warning_needs_response", 10 * USD,
    )  # fmt: skip
    opened = [adjustment("dispute", "du_1", -10 * USD, "needs_response", 10 * USD)]
    assert decide(dispute("needs_response"), opened, 10 * USD) is None
    assert decide(dispute("under_review"), opened, 10 * USD) == (0, "under_review", 10 * USD)
    assert decide(dispute("lost"), opened, 10 * USD) == (0, "lost", 10 * USD)
    assert decide(dispute("won"), opened, 10 * USD) == (-10 * USD, "won", 10 * USD)
    closed = [*opened, adjustment("dispute", "du_1", 10 * USD, "won", 10 * USD)]
    assert decide(dispute("under_review"), closed, 10 * USD) is None
    assert decide(dispute("charge_refunded"), [], 10 * USD) is None  # unknown: nothing


def test_refunds_and_disputes_together_never_take_more_than_was_paid() -> None:
    refunded = [adjustment("refund", "ch_1", -4 * USD, "partially_refunded", 4 * USD)]
    assert decide(dispute("needs_response"), refunded, 10 * USD) == (
        6 * USD, "needs_response", 10 * USD,
    )  # fmt: skip


def test_credit_comes_off_the_purchase_then_other_live_lots_then_below_zero() -> None:
    lots = [
        lot("own", 2 * USD),
        lot("late", 5 * USD, expires=None),
        lot("soon", 1 * USD, expires=NOW + 10),
        lot("expired", 9 * USD, expires=NOW - 1),
    ]
    assert take(lots, "own", USD, NOW) == [("own", USD)]
    assert take(lots, "own", 4 * USD, NOW) == [("own", 2 * USD), ("soon", USD), ("late", USD)]
    assert take(lots, "own", 10 * USD, NOW) == [
        ("own", 2 * USD), ("soon", USD), ("late", 5 * USD), ("own", 2 * USD),
    ]  # fmt: skip
    assert take([lot("own", -USD, amount=5 * USD)], "own", USD, NOW) == [("own", USD)]


def test_credit_given_back_undoes_the_latest_moves_a_debt_first() -> None:
    took = [("own", 2 * USD), ("grant", 3 * USD), ("own", 5 * USD)]
    assert give_back([took], 6 * USD, "own") == [("own", -5 * USD), ("grant", -USD)]
    assert give_back([took, [("own", -5 * USD), ("grant", -USD)]], 4 * USD, "own") == [
        ("grant", -2 * USD), ("own", -2 * USD),
    ]  # fmt: skip
    assert give_back([], USD, "own") == [("own", -USD)]


def test_a_new_lot_pays_the_debts_first() -> None:
    new = lot("new", 20 * USD)
    assert repay([lot("a", -3 * USD, amount=5 * USD), lot("b", 4 * USD), new], new) == [
        ("new", 3 * USD), ("a", -3 * USD),
    ]  # fmt: skip
    small = lot("small", USD)
    assert repay([lot("a", -3 * USD, amount=5 * USD), small], small) == [
        ("small", USD), ("a", -USD),
    ]  # fmt: skip
    assert repay([lot("b", 4 * USD), new], new) == []


def test_standing_names_what_became_of_a_payment() -> None:
    assert standing(10 * USD, []).label == ""
    part = adjustment("refund", "ch_1", -4 * USD, "partially_refunded", 4 * USD)
    assert standing(10 * USD, [part]).label == "Partially refunded"
    rest = adjustment("refund", "ch_1", -6 * USD, "refunded", 10 * USD)
    assert standing(10 * USD, [part, rest]).label == "Refunded"
    opened = adjustment("dispute", "du_1", -10 * USD, "needs_response", 10 * USD)
    assert standing(10 * USD, [opened]).label == "Disputed"
    lost = adjustment("dispute", "du_1", 0, "lost", 10 * USD)
    assert standing(10 * USD, [lost, opened]).label == "Dispute lost"  # (whatever the order)


def test_a_lot_below_zero_counts_expired_or_not_and_is_never_spent() -> None:
    money = OrgMoney("org")
    money.add_lot(Lot("debt", "purchase", 5 * USD, 5 * USD, NOW - 100, NOW - 1))
    money.add_lot(Lot("fresh", "grant", 3 * USD, 3 * USD, NOW - 50, None))
    money.readjust("debt", 7 * USD)  # a refund of credit spent... and the lot expired since
    assert money.balance(NOW) == USD
    money.readjust("debt", 7 * USD)  # the same figure again: nothing more
    assert money.balance(NOW) == USD
    assert money.headroom("proj", NOW) == (USD, money.headroom("proj", NOW)[1])
    money.readjust("debt", 5 * USD)  # a repayment moved 2 onto it
    assert money.balance(NOW) == 3 * USD
