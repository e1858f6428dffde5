"""What the Billing pages share (BRIEF C5/C9, the guide's Billing screens): their address, how they
name a card, how they are rendered, and who may change anything on them. The pages themselves,
with a sub-navigation between them (``templates/billing_nav.html``):

- Overview: billing_routes.py, its auto-recharge rule: billing_recharge_routes.py, and "Add to
  credit balance" (Configure payment, Confirm payment): billing_purchase_routes.py;
- Payment methods: billing_methods_routes.py;
- Billing history and its receipts: billing_history_routes.py;
- Preferences: billing_preferences_routes.py.

Every member sees them (the Admin API's rule: billing is read by Owners and Readers alike); only
Owners add cards and pay, as ``POLICY`` says, and every change goes through ``PaymentService`` and
is audited with the Admin API's event names."""

from __future__ import annotations

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.billing.receipts import card_label
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.session import Viewer, render
from keyplane.web.principal import Principal

PATH = "/billing"
__all__ = ["PATH", "allowed", "card_label", "render_billing"]


def render_billing(
    request: Request, viewer: Viewer, template: str, *, status: int = 200, **values: object
) -> Response:
    return render(
        request, template, status=status, viewer=viewer, card=card_label,
        **values,
    )  # fmt: skip


def allowed(request: Request, viewer: Viewer, operation: str) -> Principal:
    """The signed-in user acting in the organization, once ``POLICY`` allows ``operation`` (403
    otherwise: Readers see billing, never change it)."""
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, "Only the organization's Owners manage its payments.")
    return principal
