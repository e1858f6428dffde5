"""The Admin API against its own OpenAPI document (BRIEF C12: bad input of any kind gets a clear
4xx, never a 500): schemathesis generates requests for every operation of ``/openapi.json`` — valid
ones and invalid ones — and checks that no answer is a server error, that each status is one the
document declares, and that each body matches the declared schema. In process (ASGI), as an Owner;
derandomized, so CI sees the same examples every run.

A longer hunt, out of CI: ``KEYPLANE_FUZZ=<examples per operation>`` (half as many invalid ones),
random instead of derandomized, and ``KEYPLANE_FUZZ_DB=postgresql`` on a fresh PostgreSQL
database (``KEYPLANE_FUZZ=150`` runs some 9 minutes on either)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

# What from_asgi would import on first use, imported while the tests are collected instead: later
# another test's threads may be compiling modules of their own, and CPython 3.11.2's parser counts
# its recursion depth per interpreter, not per thread ("SystemError: AST constructor recursion
# depth mismatch" in pytest's assertion rewriting, seen once on a fresh clone).
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from conftest import fresh_postgres, make_settings
from keyplane import bootstrap, gateway_assembly
from keyplane.keys.format import KeyKind
from keyplane.web.admin import create_admin_app

# Per operation (50 of them): about 600 requests in all, in some 15 s. (Run with 40 and 20 once,
# 3,000 requests, without a failure.)
LONG = int(os.environ.get("KEYPLANE_FUZZ", "0"))
EXAMPLES = {GenerationMode.POSITIVE: LONG or 8, GenerationMode.NEGATIVE: LONG // 2 or 4}
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, read from an app with no services behind
    it (building the document touches nothing), so each is its own test."""

    async def nothing() -> None:
        return None

    app = create_admin_app(object(), auth=object(), on_money_change=nothing)  # type: ignore[arg-type]
    paths = app.openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


@dataclass
class Target:
    schema: schemathesis.BaseSchema
    owner_key: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    stack = contextlib.ExitStack()
    url = ""
    if os.environ.get("KEYPLANE_FUZZ_DB") == "postgresql":
        url = stack.enter_context(fresh_postgres())
    data_dir = tmp_path_factory.mktemp("schemathesis")
    container = bootstrap.build(make_settings(data_dir, database_url=url))
    owner, org, _ = container.accounts.initialize(
        email="owner@example.com", password="correct horse battery", org_name="Acme"
    )
    container.billing.open_account(org.id, tier="tier-5", welcome_credit=0)
    _, key = container.keys.create(
        kind=KeyKind.ADMIN, org_id=org.id, project_id=None, name="schemathesis",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    app, gateway = gateway_assembly.build_app(container)
    try:
        yield Target(schemathesis.openapi.from_asgi("/openapi.json", app.admin), key)
    finally:
        asyncio.run(gateway.shutdown())
        container.close()
        stack.close()


def test_the_document_has_every_operation() -> None:
    assert len(_operations()) >= 50


@pytest.mark.parametrize(("method", "path"), _operations())
@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
def test_every_operation_answers_as_documented(
    target: Target, method: str, path: str, mode: GenerationMode
) -> None:
    operation = target.schema[path][method]
    headers = {"authorization": f"Bearer {target.owner_key}"}

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=not LONG,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()
