"""Organization- and project-level access policy: allowed models and IP allowlists."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keyplane.cli.common import JsonOpt, OrgOpt, container, fail, listed, out
from keyplane.errors import KeyplaneError
from keyplane.keys.access import AccessPolicyService

access_app = typer.Typer(
    help="Allowed models and IP allowlists of the organization or a project.", no_args_is_help=True
)
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="A project (default: the organization).")
]


def _target(org: str | None, project: str | None) -> tuple[AccessPolicyService, str, str, str]:
    c = container()
    try:
        organization = c.accounts.find_organization(org)
        if project:
            return (
                c.access,
                organization.id,
                "project",
                c.accounts.find_project(organization.id, project).id,
            )
    except KeyplaneError as exc:
        fail(exc.message)
    return c.access, organization.id, "org", organization.id


@access_app.command("show")
def access_show(project: ProjectOpt = None, org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Show the allowed models and IP allowlist."""
    service, _, scope_type, scope_id = _target(org, project)
    policy = service.policy(scope_type, scope_id)
    payload = {"allowed_models": policy.allowed_models, "allowed_ips": policy.allowed_cidrs}
    if as_json:
        out.print_json(json.dumps(payload))
        return
    out.print(f"Allowed models: {listed(policy.allowed_models)}")
    out.print(f"Allowed IPs: {listed(policy.allowed_cidrs)}")


@access_app.command("set")
def access_set(
    allow_model: Annotated[
        list[str] | None, typer.Option("--allow-model", help="Only these models (repeatable).")
    ] = None,
    any_model: Annotated[bool, typer.Option("--any-model", help="No model restriction.")] = False,
    allow_ip: Annotated[
        list[str] | None, typer.Option("--allow-ip", help="Only these IPs/CIDRs (repeatable).")
    ] = None,
    any_ip: Annotated[bool, typer.Option("--any-ip", help="No IP restriction.")] = False,
    project: ProjectOpt = None,
    org: OrgOpt = None,
) -> None:
    """Set the allowed models and IP allowlist (every level a request crosses must allow it)."""
    service, org_id, scope_type, scope_id = _target(org, project)
    current = service.policy(scope_type, scope_id)
    try:
        policy = service.set_policy(
            org_id, scope_type, scope_id,
            allowed_models=None if any_model else (allow_model or current.allowed_models),
            allowed_cidrs=None if any_ip else (allow_ip or current.allowed_cidrs),
        )  # fmt: skip
    except KeyplaneError as exc:
        fail(exc.message)
    out.print(
        f"Allowed models: {listed(policy.allowed_models)}; allowed IPs: {listed(policy.allowed_cidrs)}."
    )
