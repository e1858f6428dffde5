"""Organization- and project-level access policy: allowed models and IP allowlists."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keyplane import bootstrap
from keyplane.audit.service import changed
from keyplane.cli.common import JsonOpt, OrgOpt, audit, container, fail, listed, out, recorded
from keyplane.errors import KeyplaneError
from keyplane.keys.access import AccessPolicy, AccessPolicyService

access_app = typer.Typer(
    help="Allowed models and IP allowlists of the organization or a project.", no_args_is_help=True
)
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="A project (default: the organization).")
]


def _target(
    org: str | None, project: str | None
) -> tuple[bootstrap.Container, AccessPolicyService, str, str, str]:
    c = container()
    try:
        organization = c.accounts.find_organization(org)
        if project:
            project_id = c.accounts.find_project(organization.id, project).id
            return c, c.access, organization.id, "project", project_id
    except KeyplaneError as exc:
        fail(exc.message)
    return c, c.access, organization.id, "org", organization.id


def _shown(policy: AccessPolicy) -> dict[str, list[str] | None]:
    """A policy as the audit log shows it (the Admin API's names for a key's allowlists)."""
    models, ips = policy.allowed_models, policy.allowed_cidrs
    return {
        "allowed_models": None if models is None else list(models),
        "allowed_ips": None if ips is None else list(ips),
    }


@access_app.command("show")
def access_show(project: ProjectOpt = None, org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Show the allowed models and IP allowlist."""
    _, service, _, scope_type, scope_id = _target(org, project)
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
    c, service, org_id, scope_type, scope_id = _target(org, project)
    current = service.policy(scope_type, scope_id)
    # OpenAI's event for a change to the organization or a project itself.
    event, project_id = (
        ("project.updated", scope_id) if scope_type == "project" else ("organization.updated", None)
    )
    with recorded(c):
        policy = service.set_policy(
            org_id, scope_type, scope_id,
            allowed_models=None if any_model else (allow_model or current.allowed_models),
            allowed_cidrs=None if any_ip else (allow_ip or current.allowed_cidrs),
        )  # fmt: skip
        audit(c, org_id, event, target_id=scope_id, project_id=project_id,
              details=changed(_shown(current), _shown(policy)))  # fmt: skip
    out.print(
        f"Allowed models: {listed(policy.allowed_models)}; allowed IPs: {listed(policy.allowed_cidrs)}."
    )
