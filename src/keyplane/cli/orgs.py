"""Operator commands for organizations: verification decisions."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keyplane.audit.service import changed
from keyplane.cli.common import JsonOpt, OrgOpt, audit, container, fail, iso, out, recorded
from keyplane.errors import KeyplaneError

orgs_app = typer.Typer(help="Organizations: verification.", no_args_is_help=True)


@orgs_app.command("verification")
def verification_show(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Show an organization's verification status (and whether keys require it)."""
    c = container()
    try:
        org_id = c.accounts.find_organization(org).id
    except KeyplaneError as exc:
        fail(exc.message)
    v = c.verification.status(org_id)
    if as_json:
        payload = {
            "status": v.status.value,
            "required": c.verification.required,
            "legal_name": v.legal_name,
            "website": v.website,
        }
        out.print_json(json.dumps(payload))
        return
    out.print(
        f"Verification: {v.status.value} (required for keys: {'yes' if c.verification.required else 'no'})"
    )
    if v.requested_at:
        out.print(f"  requested {iso(v.requested_at)}: {v.legal_name} {v.website}")


@orgs_app.command("verify")
def verification_decide(
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    note: Annotated[str, typer.Option(help="Why (shown to the Owners).")] = "",
    org: OrgOpt = None,
) -> None:
    """Approve (or --reject) an organization's verification."""
    c = container()
    with recorded(c):
        org_id = c.accounts.find_organization(org).id
        before = c.verification.status(org_id)
        v = c.verification.decide(org_id, approve=not reject, note=note)
        # After the Owner's organization.verification_started: the operator's decision.
        event = (
            "organization.verification_rejected" if reject else "organization.verification_approved"
        )
        audit(c, org_id, event, target_id=org_id, details=changed(
            {"status": before.status.value, "note": before.note},
            {"status": v.status.value, "note": v.note},
        ))  # fmt: skip
    out.print(f"Organization verification: {v.status.value}.")
