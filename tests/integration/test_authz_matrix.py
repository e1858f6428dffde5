"""The authorization matrix (BRIEF C1; OWASP API1 and API5): every Admin API operation — found by
walking the app's routes, so a new route cannot be left out — called by each kind of caller, with
real ids of this organization, gets exactly the expected status:

=====================  =====================  =============================================
caller                 read (GET)             write (POST, DELETE)
=====================  =====================  =============================================
Owner's admin key      200                    200
Reader's admin key     200                    403
Reader, project Owner  200                    403 (a project role adds no right: BRIEF C1)
other org's Owner      404 (200 without ids)  404 (200 without ids: acts on its own org)
project key            401                    401
no credentials         401                    401
=====================  =====================  =============================================

and no answer to another organization carries an id of this one.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from test_admin_org import OrgEnv, add_member, admin_key, org_env, setup_actor

from keyplane.accounts.models import OrgRole, User
from keyplane.accounts.org_ports import ProjectRole
from keyplane.billing.payment_ports import CardDetails
from keyplane.web.authz import POLICY, authorize

pytestmark = pytest.mark.anyio

PARAM = re.compile(r"{(\w+)}")
Body = dict[str, Any] | Callable[[dict[str, str]], dict[str, Any]]

# The query an operation needs (the Owner's call must succeed).
QUERIES = {
    name: "?start_time=0"
    for name in (
        "usage.completions",
        "usage.embeddings",
        "usage.moderations",
        "usage.images",
        "usage.audio_transcriptions",
        "usage.audio_speeches",
        "usage.vector_stores",
        "usage.code_interpreter_sessions",
        "costs.list",
    )
}

# A sandbox test card (its charges succeed).
CARD: Any = {"number": "4242424242424242", "exp_month": 12, "exp_year": time.gmtime().tm_year + 3,
             "cvc": "123"}  # fmt: skip

# A valid body for every operation that takes one (the Owner's call must succeed).
BODIES: dict[str, Body] = {
    "project_rate_limits.update": {"max_requests_per_1_minute": 1},
    "project_api_keys.rotate": {"grace_period_seconds": 60},
    "project_api_keys.update": {"scopes": ["chat.write"]},
    "verification.start": {"legal_name": "Acme Corporation", "website": "https://acme.example"},
    "credit_grants.create": {"amount_micro_usd": 1000},
    "spend_limit.update": {"threshold_amount": 100},
    "project_spend_limit.update": {"threshold_amount": 100},
    "spend_alerts.create": {"threshold_amount": 100},
    "project_spend_alerts.create": {"threshold_amount": 100},
    "billing_settings.update": {"mode": "prepaid"},
    "payment_methods.create": {"card": CARD},
    "credit_purchases.create": {"amount_micro_usd": 5_000_000},  # charges the default card
    "admin_api_keys.create": {"name": "matrix"},
    "users.update": {"role": "owner"},
    "invites.create": lambda ids: {"email": f"new-{ids['n']}@example.com", "role": "reader"},
    "projects.create": lambda ids: {"name": f"new {ids['n']}"},
    "projects.update": {"name": "renamed"},
    "project_api_keys.create": {"name": "matrix"},
    "project_service_accounts.create": {"name": "matrix"},
    "project_users.create": lambda ids: {"user_id": ids["outsider"], "role": "member"},
    "project_users.update": {"role": "owner"},
    "webhooks.create": {"url": "https://hooks.example/keyplane", "events": ["api_key.leaked"]},
}
_counter = itertools.count()


def add_card(env: OrgEnv, org_id: str) -> str:
    card = CardDetails(CARD["number"], CARD["exp_month"], CARD["exp_year"], CARD["cvc"])
    return env.container.payments.add_method(org_id, card).id


def admin_routes(app: FastAPI) -> list[APIRoute]:
    """Every operation of the Admin API (FastAPI keeps included routers as wrappers)."""
    found = [c.original_route for c in iter_route_contexts(app.routes)]
    return [r for r in found if isinstance(r, APIRoute) and r.path.startswith("/v1/organization")]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OrgEnv]:
    async with org_env(tmp_path) as instance:
        for org_id in (instance.org.id, instance.other_org.id):  # a card to buy credits with
            add_card(instance, org_id)
        yield instance


@dataclass(frozen=True)
class ProjectReader:
    """A Reader of the organization made an Owner of every project ``fresh_ids`` creates, and
    the owner of the key it names: their admin key may still change nothing."""

    user: User
    key: str


@pytest.fixture
async def project_reader(env: OrgEnv) -> ProjectReader:
    user, _ = add_member(
        env.svc, env.container, env.org.id, env.owner, "pat@example.com", OrgRole.READER
    )
    found = ProjectReader(user, admin_key(env.container, env.org.id, user.id))
    await env.gateway.pipeline.auth.refresh()
    return found


def fresh_ids(env: OrgEnv, route: APIRoute, reader: ProjectReader) -> dict[str, str]:
    """New objects of the first organization for every id the route's path names, so that
    deleting or archiving them cannot disturb the next route."""
    n = next(_counter)
    orgs, org_id, actor = env.svc.orgs, env.org.id, setup_actor(env.owner)
    container = env.container
    project = orgs.create_project(actor, org_id, f"matrix {n}")
    member, _ = add_member(
        env.svc, container, org_id, env.owner, f"m{n}@example.com", OrgRole.READER
    )
    outsider, _ = add_member(
        env.svc, container, org_id, env.owner, f"o{n}@example.com", OrgRole.READER
    )
    orgs.add_project_member(actor, org_id, project.id, member.id, ProjectRole.MEMBER)
    orgs.add_project_member(actor, org_id, project.id, reader.user.id, ProjectRole.OWNER)
    account, _, _ = orgs.create_service_account(actor, org_id, project.id, "sa")
    in_project = "/projects/" in route.path
    if "/admin_api_keys/" in route.path:
        key, _ = orgs.create_admin_key(actor, org_id, "a", env.owner.id, expires_in_s=None)
    else:
        key, _ = orgs.create_project_key(actor, org_id, project.id, "k", reader.user.id)
    alert = container.billing.add_alert(  # (a threshold of its own: the same one is refused)
        org_id, 10_000 + n, project_id=project.id if in_project else None
    )
    # (A card only where the path names one: an organization keeps at most ten.)
    method_id = add_card(env, org_id) if "{payment_method_id}" in route.path else "pm_none"
    return {
        "n": str(n),
        "project_id": project.id,
        "key_id": key.id,
        "service_account_id": account.id,
        "user_id": member.id,
        "outsider": outsider.id,
        "invite_id": orgs.invite(actor, org_id, f"i{n}@example.com", OrgRole.READER).id,
        "grant_id": container.billing.grant(org_id, 1000, note="matrix").id,
        "alert_id": alert.id,
        "rate_limit_id": "rl-gpt-4o-mini",
        "webhook_id": container.webhooks.create(  # (only when named: an org has at most 16)
            org_id, "https://hooks.example/keyplane", ["api_key.leaked"]
        )[0].id
        if "{webhook_id}" in route.path
        else "we_not_made",
        "payment_method_id": method_id,
    }


def test_every_route_is_in_the_policy_and_checked() -> None:
    from keyplane.web.admin import create_admin_app

    class Nothing:
        pass

    async def nothing() -> None:
        return None

    app = create_admin_app(Nothing(), auth=Nothing(), on_money_change=nothing)  # type: ignore[arg-type]
    routes = admin_routes(app)
    names = [r.name for r in routes]
    assert len(routes) >= 50
    assert sorted(names) == sorted(POLICY), "every route needs an entry in authz.POLICY"
    for route in routes:
        calls = [d.call for d in route.dependant.dependencies]
        assert authorize in calls, f"{route.name} is not checked by authz.authorize"


async def test_each_caller_gets_exactly_the_expected_status(
    env: OrgEnv, project_reader: ProjectReader
) -> None:
    callers = {
        "no credentials": None,
        "project key": env.project_key,
        "other org's Owner": env.other_key,
        "Reader": env.reader_key,
        "Reader, project Owner": project_reader.key,
        "Owner": env.owner_key,  # last: the Owner's writes change things
    }
    wrong: list[str] = []
    routes = admin_routes(env.app.admin.app)  # type: ignore[attr-defined]
    assert len(routes) == len(POLICY)
    for route in routes:
        assert route.name in POLICY, route.name
        (method,) = route.methods
        ids = fresh_ids(env, route, project_reader)
        params = PARAM.findall(route.path)
        path = route.path.format(**{p: ids[p] for p in params}) + QUERIES.get(route.name, "")
        body = BODIES.get(route.name)
        if route.body_field is not None:
            assert body is not None, f"add a valid body for {route.name} to BODIES"
        payload = body(ids) if callable(body) else body
        for caller, key in callers.items():
            if caller in ("no credentials", "project key"):
                expected = 401
            elif caller == "other org's Owner":
                expected = 404 if params else 200
            elif caller.startswith("Reader"):
                expected = 200 if method == "GET" else 403
            else:
                expected = 200
            headers = {} if key is None else {"authorization": f"Bearer {key}"}
            r = await env.client.request(method, path, json=payload, headers=headers)
            if r.status_code != expected:
                wrong.append(f"{caller:21} {method:6} {route.path}: {r.status_code} != {expected}")
            elif r.status_code != 200:
                assert set(r.json()) == {"error"}
            if caller == "other org's Owner" and r.status_code == 200:
                ours = [v for k, v in ids.items() if k != "n"] + [env.org.id, env.project.id]
                leaked = [v for v in ours if v in r.text]
                if leaked:
                    wrong.append(f"{method} {route.path} shows another org {leaked}")
    assert not wrong, "\n".join(wrong)
