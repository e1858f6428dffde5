"""Admin API for paying for credits (BRIEF C5): payment methods, credit purchases and the billing
history — over the real SQLite store and the sandbox payment provider, in the same ASGI app as
the gateway, in process, as an Owner, a Reader and another organization's Owner."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_admin_billing import error_of
from test_admin_org import OrgEnv, org_env

pytestmark = pytest.mark.anyio

DOLLAR = 1_000_000
START_CREDIT = 5 * DOLLAR  # org_env's test credit
VISA = "4242424242424242"
DECLINED = "4000000000000002"
NO_FUNDS = "4000000000009995"
CVC = "739"
EXP_YEAR = time.gmtime().tm_year + 3
METHOD_FIELDS = {"object", "id", "brand", "last4", "exp_month", "exp_year", "is_default",
                 "created_at"}  # fmt: skip
PURCHASE_FIELDS = {"object", "id", "kind", "amount_micro_usd", "status", "payment_method",
                   "brand", "last4", "failure_code", "credit_grant_id", "created_at",
                   "provider_payment_id", "amount_refunded_micro_usd", "dispute_status"}  # fmt: skip


def card(number: Any = VISA, **changes: Any) -> dict[str, Any]:
    return {"number": number, "exp_month": 12, "exp_year": EXP_YEAR, "cvc": CVC, **changes}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OrgEnv]:
    async with org_env(tmp_path) as instance:
        yield instance


async def add_card(env: OrgEnv, number: str = VISA, key: str | None = None, **body: Any) -> Any:
    return await env.ok("POST", "/payment_methods", {"card": card(number), **body}, key)


async def buy(env: OrgEnv, amount: int, idempotency_key: str | None = None, **body: Any) -> Any:
    headers = env.headers()
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return await env.client.post(
        "/v1/organization/credit_purchases",
        json={"amount_micro_usd": amount, **body},
        headers=headers,
    )


async def available(env: OrgEnv) -> int:
    return int((await env.ok("GET", "/credit_balance"))["available_micro_usd"])


async def history(env: OrgEnv) -> list[dict[str, Any]]:
    return list((await env.ok("GET", "/billing_history"))["data"])


async def audited(env: OrgEnv, event_type: str) -> list[dict[str, Any]]:
    events = (await env.ok("GET", f"/audit_logs?event_types[]={event_type}&limit=100"))["data"]
    return [e[event_type] for e in events]


async def test_a_purchase_adds_exactly_its_amount_and_shows_in_the_history(env: OrgEnv) -> None:
    method = await add_card(env, "4242 4242 4242 4242")
    assert set(method) == METHOD_FIELDS and method["id"].startswith("pm_")
    assert method["object"] == "payment_method" and method["is_default"] is True
    assert (method["brand"], method["last4"]) == ("visa", "4242")
    assert (method["exp_month"], method["exp_year"]) == (12, EXP_YEAR)
    listed = await env.ok("GET", "/payment_methods")
    assert listed["object"] == "list" and listed["data"] == [method]

    r = await buy(env, 10 * DOLLAR)
    assert r.status_code == 200, r.text
    bought = r.json()
    assert set(bought) == PURCHASE_FIELDS and bought["id"].startswith("pay_")
    assert bought["object"] == "credit_purchase" and bought["kind"] == "purchase"
    assert bought["amount_micro_usd"] == 10 * DOLLAR and bought["status"] == "succeeded"
    assert bought["payment_method"] == method["id"] and bought["failure_code"] is None
    assert (bought["brand"], bought["last4"]) == ("visa", "4242")
    assert bought["provider_payment_id"] is None  # (the sandbox makes no payment ids)
    assert (bought["amount_refunded_micro_usd"], bought["dispute_status"]) == (0, None)
    assert await available(env) == START_CREDIT + 10 * DOLLAR
    # The credit it bought is a purchase lot: non-refundable, expiring a year later.
    lot = await env.ok("GET", f"/credit_grants/{bought['credit_grant_id']}")
    assert lot["kind"] == "purchase" and lot["amount_micro_usd"] == 10 * DOLLAR
    assert lot["expires_at"] == lot["created_at"] + 365 * 86400
    r = await env.call("POST", f"/credit_grants/{lot['id']}/revoke")
    error_of(r, 400)

    assert await history(env) == [bought]
    [event] = await audited(env, "credit_purchase.created")
    assert event == {
        "id": bought["id"],
        "data": {
            "amount_micro_usd": 10 * DOLLAR, "status": "succeeded", "failure_code": None,
            "payment_method": method["id"],
        },
    }  # fmt: skip


async def test_a_replayed_purchase_charges_once_and_a_reused_key_is_refused(env: OrgEnv) -> None:
    first_card = await add_card(env)
    first = await buy(env, 10 * DOLLAR, "buy-2026-11-26")
    again = await buy(env, 10 * DOLLAR, "buy-2026-11-26")
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await available(env) == START_CREDIT + 10 * DOLLAR
    assert [p["id"] for p in await history(env)] == [first.json()["id"]]

    other = await buy(env, 20 * DOLLAR, "buy-2026-11-26")
    assert error_of(other, 409, "idempotency_key_reused")["param"] == "Idempotency-Key"
    # A retry of the same request is still a replay once another card became the default, even
    # once the card it charged is gone.
    await add_card(env, "5555555555554444")
    await env.ok("DELETE", f"/payment_methods/{first_card['id']}")
    late = await buy(env, 10 * DOLLAR, "buy-2026-11-26")
    assert late.status_code == 200 and late.json() == first.json()
    assert await available(env) == START_CREDIT + 10 * DOLLAR
    # The audit log tells of one charge, not of each replay; a new key is a new charge.
    assert [e["id"] for e in await audited(env, "credit_purchase.created")] == [first.json()["id"]]
    new = await buy(env, 10 * DOLLAR, "buy-2026-11-27")
    assert new.status_code == 200 and new.json()["id"] != first.json()["id"]
    assert new.json()["last4"] == "4444"
    assert await available(env) == START_CREDIT + 20 * DOLLAR


async def test_a_declined_card_answers_402_and_credits_nothing(env: OrgEnv) -> None:
    declined = await add_card(env, DECLINED)
    r = await buy(env, 10 * DOLLAR, "declined-once")
    assert r.status_code == 402, r.text
    assert r.json() == {
        "error": {
            "message": "Your card was declined.", "type": "card_error", "code": "card_declined",
            "param": None,
        }
    }  # fmt: skip
    assert await available(env) == START_CREDIT
    [line] = await history(env)
    assert line["status"] == "failed" and line["failure_code"] == "card_declined"
    assert line["credit_grant_id"] is None and line["payment_method"] == declined["id"]
    assert line["amount_micro_usd"] == 10 * DOLLAR and line["last4"] == "0002"

    # A replay answers the same decline without charging again; the audit log has one entry.
    again = await buy(env, 10 * DOLLAR, "declined-once")
    assert again.status_code == 402 and again.json() == r.json()
    assert len(await history(env)) == 1
    [event] = await audited(env, "credit_purchase.created")
    assert event["id"] == line["id"]
    assert event["data"]["status"] == "failed" and event["data"]["failure_code"] == "card_declined"

    # Another decline code, on a method named in the body rather than the default.
    poor = await add_card(env, NO_FUNDS, default=False)
    r = await buy(env, 5 * DOLLAR, payment_method=poor["id"])
    assert error_of(r, 402, "insufficient_funds")["type"] == "card_error"
    assert [p["failure_code"] for p in await history(env)] == [
        "insufficient_funds",
        "card_declined",
    ]
    assert await available(env) == START_CREDIT


@pytest.mark.parametrize(
    "amount",
    [4_990_000, 100_010_000, 10_000_001, 5_005_000, 0, -DOLLAR, 10**30, "10000000", 10_000_000.5],
)
async def test_amounts_outside_the_bounds_or_in_fractions_of_a_cent_are_refused(
    env: OrgEnv, amount: Any
) -> None:
    await add_card(env)
    error = error_of(await buy(env, amount), 400)
    assert error["param"] == "amount_micro_usd" and error["type"] == "invalid_request_error"
    assert await history(env) == [] and await available(env) == START_CREDIT


async def test_the_bounds_themselves_are_accepted(env: OrgEnv) -> None:
    await add_card(env)
    for amount in (5 * DOLLAR, 100 * DOLLAR, 12_340_000):  # $5, $100, $12.34
        r = await buy(env, amount)
        assert r.status_code == 200 and r.json()["amount_micro_usd"] == amount, r.text
    assert await available(env) == START_CREDIT + 117_340_000


async def test_a_reader_lists_but_cannot_add_change_or_buy(env: OrgEnv) -> None:
    method = await add_card(env)
    await buy(env, 5 * DOLLAR)
    reader = env.reader_key
    assert (await env.ok("GET", "/payment_methods", key=reader))["data"] == [method]
    assert len((await env.ok("GET", "/billing_history", key=reader))["data"]) == 1
    for method_name, path, body in [
        ("POST", "/payment_methods", {"card": card()}),
        ("POST", f"/payment_methods/{method['id']}/default", None),
        ("DELETE", f"/payment_methods/{method['id']}", None),
        ("POST", "/credit_purchases", {"amount_micro_usd": 5 * DOLLAR}),
    ]:
        r = await env.call(method_name, path, body, key=reader)
        error_of(r, 403, "insufficient_permissions")
    assert (await env.ok("GET", "/payment_methods"))["data"] == [method]
    assert await available(env) == START_CREDIT + 5 * DOLLAR


async def test_another_organizations_method_is_not_found(env: OrgEnv) -> None:
    theirs = await add_card(env, key=env.other_key)
    mine = await add_card(env)
    assert (await env.ok("GET", "/payment_methods"))["data"] == [mine]
    for pm_id in (theirs["id"], "pm_unknown"):
        for method_name, path in [
            ("POST", f"/payment_methods/{pm_id}/default"),
            ("DELETE", f"/payment_methods/{pm_id}"),
        ]:
            error = error_of(await env.call(method_name, path), 404, "not_found")
            assert error["param"] == "payment_method_id"
        r = await buy(env, 5 * DOLLAR, payment_method=pm_id)
        assert error_of(r, 404, "not_found")["param"] == "payment_method"
    # Nothing of theirs changed, nothing charged.
    assert (await env.ok("GET", "/payment_methods", key=env.other_key))["data"] == [theirs]
    assert await history(env) == []


async def test_the_default_moves_when_the_default_card_is_removed(env: OrgEnv) -> None:
    # No card yet: a purchase says what to do.
    error = error_of(await buy(env, 5 * DOLLAR), 400)
    assert error["param"] == "payment_method" and "payment method" in error["message"]
    first = await add_card(env, default=False)  # the first card is the default anyway
    assert first["is_default"] is True
    second = await add_card(env, "5555555555554444", default=False)
    assert second["is_default"] is False

    made = await env.ok("POST", f"/payment_methods/{second['id']}/default")
    assert made == {**second, "is_default": True}
    listed = (await env.ok("GET", "/payment_methods"))["data"]
    assert [(m["id"], m["is_default"]) for m in listed] == [
        (second["id"], True),
        (first["id"], False),
    ]
    [event] = await audited(env, "payment_method.updated")
    assert event["id"] == second["id"] and event["after"] == {"is_default": True}

    deleted = await env.ok("DELETE", f"/payment_methods/{second['id']}")
    assert deleted == {"object": "payment_method.deleted", "id": second["id"], "deleted": True}
    listed = (await env.ok("GET", "/payment_methods"))["data"]
    assert listed == [{**first, "is_default": True}]
    r = await buy(env, 5 * DOLLAR)  # charges the new default
    assert r.status_code == 200 and r.json()["payment_method"] == first["id"]
    error_of(await env.call("DELETE", f"/payment_methods/{second['id']}"), 404)  # once only
    [event] = await audited(env, "payment_method.deleted")
    assert event == {"id": second["id"], "data": {"brand": "mastercard", "last4": "4444"}}

    await env.ok("DELETE", f"/payment_methods/{first['id']}")
    assert (await env.ok("GET", "/payment_methods"))["data"] == []
    error_of(await buy(env, 5 * DOLLAR), 400)


async def test_the_billing_history_pages_newest_first(env: OrgEnv) -> None:
    await add_card(env)
    ids = []
    for dollars in (5, 6, 7):
        r = await buy(env, dollars * DOLLAR)
        ids.insert(0, r.json()["id"])
    page = await env.ok("GET", "/billing_history?limit=2")
    assert [p["id"] for p in page["data"]] == ids[:2] and page["has_more"] is True
    assert [p["amount_micro_usd"] for p in page["data"]] == [7 * DOLLAR, 6 * DOLLAR]
    rest = await env.ok("GET", f"/billing_history?limit=2&after={page['last_id']}")
    assert [p["id"] for p in rest["data"]] == ids[2:] and rest["has_more"] is False
    everything = await env.ok("GET", "/billing_history?limit=3")
    assert [p["id"] for p in everything["data"]] == ids and everything["has_more"] is False
    error = error_of(await env.call("GET", "/billing_history?after=pay_unknown"), 400)
    assert error["param"] == "after"
    assert (await env.ok("GET", "/billing_history", key=env.other_key))["data"] == []


# -- card numbers and CVCs ----------------------------------------------------------------------
BAD_CARDS: list[tuple[dict[str, Any], str]] = [
    (card("4242424242424241"), "card.number"),  # fails the Luhn check
    (card("4111111111111111"), "card.number"),  # a real-looking card: not a sandbox test card
    (card("424242424242424²"), "card.number"),  # a digit to str.isdigit(), not to int()
    (card(exp_month=13), "card.exp_month"),
    (card(exp_year=EXP_YEAR - 10), "card.exp_year"),
    (card(cvc="7391"), "card.cvc"),  # a Visa's is three digits
    (card(cvc="٧٣٩"), "card.cvc"),  # Arabic-Indic digits, three of them
    # Malformed: FastAPI's validation must name the field without echoing the value.
    (card(int(VISA)), "card.number"),
    (card(VISA * 2 + "42424242"), "card.number"),  # 40 characters
    (card(cvc=int(CVC)), "card.cvc"),
    (card(VISA + "\x00"), "card.number"),
    (card(exp_month="12"), "card.exp_month"),
    ({**card(), "pin": CVC}, "card.pin"),
]


def leaks(text: str, *numbers: str) -> list[str]:
    """Any of these card numbers (spaced or not), or the CVC, found in ``text``."""
    digits = re.sub(r"[\s-]", "", text)
    found = [n for n in numbers if re.sub(r"\D", "", n)[:12] in digits]
    found += re.findall(rf"(?<![0-9A-Za-z]){CVC}(?![0-9A-Za-z])|٧٣٩", text)
    return found


async def test_card_numbers_and_cvcs_never_leave_the_request(
    env: OrgEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for body, param in BAD_CARDS:
        r = await env.call("POST", "/payment_methods", {"card": body})
        error = error_of(r, 400)
        assert error["param"] == param, (param, error)
        # (The sandbox's own message names the public test cards: the number sent is not one.)
        assert not leaks(r.text, str(body["number"])), (param, r.text)
    r = await env.call("POST", "/payment_methods", {"card": card(), "default": "maybe"})
    assert error_of(r, 400)["param"] == "default" and not leaks(r.text, VISA)
    assert await env.ok("GET", "/payment_methods") == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False
    }  # fmt: skip

    seen: list[str] = []
    for number in (VISA, DECLINED):
        method = await add_card(env, number)
        seen.append(str(method))
        [event] = [
            e for e in await audited(env, "payment_method.created") if e["id"] == method["id"]
        ]
        assert event == {"id": method["id"], "data": {"brand": "visa", "last4": number[-4:]}}
    await buy(env, 5 * DOLLAR)
    for path in ("/payment_methods", "/billing_history", "/audit_logs?limit=100"):
        seen.append((await env.call("GET", path)).text)
    # The provider's reference stays inside keyplane too.
    assert not any("sbx_" in text for text in seen)
    every = [VISA, DECLINED, *(str(body["number"]) for body, _ in BAD_CARDS)]
    assert not [(leak, text) for text in seen for leak in leaks(text, *every)]
    logged = [f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]
    assert not [(leak, line) for line in logged for leak in leaks(line, *every)]


async def test_the_gateway_serves_on_purchased_credit_at_once(env: OrgEnv) -> None:
    # No credit left: the gateway refuses. (Its background poll is not running in these tests:
    # only the purchase's own refresh can let the next request through.)
    [grant] = (await env.ok("GET", "/credit_grants"))["data"]
    await env.ok("POST", f"/credit_grants/{grant['id']}/revoke")
    assert await available(env) == 0
    assert await env.chat(env.project_key) == 429
    await add_card(env)
    assert (await buy(env, 5 * DOLLAR)).status_code == 200
    assert await env.chat(env.project_key) == 200
