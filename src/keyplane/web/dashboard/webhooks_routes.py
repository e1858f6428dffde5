"""The Webhooks page (as the settings of OpenAI's platform have one): the organization's endpoints,
the events each one is sent and what became of its latest deliveries. Owners add an endpoint (its
signing secret shown once, as a key's is) and delete one, after a confirmation page; Readers see
them.

Who may do what is the Admin API's rule (``POLICY``'s ``webhooks.list``, ``.create``, ``.delete``),
and every change goes through the same service and audit events (``webhook.created`` and
``webhook.deleted``, with the same details) as the Admin API's."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.errors import InvalidRequest, NotFound
from keyplane.notify.webhooks import EVENT_TYPES, MAX_ENDPOINTS, WebhookEndpoint
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.once import OnceForms
from keyplane.web.dashboard.session import (
    CurrentMember,
    Redirect,
    Viewer,
    context,
    render,
    same_org,
)
from keyplane.web.principal import Principal
from keyplane.web.webhook_routes import created_details, deleted_details

router = APIRouter()
PATH = "/webhooks"
RECENT = 5  # deliveries shown for each endpoint
FIELDS = ("url", "events", "description")  # a refusal naming another param is the form's
REFUSED = {
    "webhooks.list": "Your role does not allow seeing this organization's webhooks.",
    "webhooks.create": "Only the organization's Owners add webhooks.",
    "webhooks.delete": "Only the organization's Owners delete webhooks.",
}
_FORMS = OnceForms()  # the add form's one-time ids


@dataclass(frozen=True, slots=True)
class WebhookForm:
    """The add form as it was sent, to show again with what was wrong."""

    url: str = ""
    events: tuple[str, ...] = ()
    description: str = ""


def _allowed(request: Request, viewer: Viewer, operation: str) -> Principal:
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, REFUSED[operation])
    return principal


@router.get(PATH)
def webhooks_page(request: Request, viewer: CurrentMember) -> Response:
    principal = _allowed(request, viewer, "webhooks.list")
    webhooks = context(request).services.webhooks
    recent = webhooks.recent_deliveries(principal.org_id, RECENT)
    rows = [(e, recent.get(e.id, ())) for e in webhooks.endpoints(principal.org_id)]
    return render(
        request, "webhooks.html", viewer=viewer, rows=rows, event_types=EVENT_TYPES,
        can_create=may(request, principal, "webhooks.create", None),
        can_delete=may(request, principal, "webhooks.delete", None), most=MAX_ENDPOINTS,
    )  # fmt: skip


def _form_page(
    request: Request, viewer: Viewer, *, status: int = 200,
    errors: dict[str, str] | None = None, form: WebhookForm | None = None,
) -> Response:  # fmt: skip
    return render(
        request, "webhook_new.html", status=status, viewer=viewer, event_types=EVENT_TYPES,
        errors=errors or {}, form=form or WebhookForm(), form_id=secrets.token_urlsafe(16),
    )  # fmt: skip


@router.get(PATH + "/new")
def new_webhook_page(request: Request, viewer: CurrentMember) -> Response:
    _allowed(request, viewer, "webhooks.create")
    return _form_page(request, viewer)


@router.post(PATH)
async def create_webhook(request: Request, viewer: CurrentMember) -> Response:
    sent = await request.form()
    fields = {k: v for k, v in sent.items() if isinstance(v, str)}
    events = tuple(v for v in sent.getlist("events") if isinstance(v, str))
    return await asyncio.to_thread(_create, request, viewer, fields, events)


def _create(
    request: Request, viewer: Viewer, fields: dict[str, str], events: tuple[str, ...]
) -> Response:
    principal = _allowed(request, viewer, "webhooks.create")
    same_org(viewer, fields.get("org_id", ""))
    # (a browser strips the spaces around a URL field's value; a form sent otherwise may not)
    form = WebhookForm(fields.get("url", "").strip(), events, fields.get("description", ""))
    form_id = fields.get("form_id", "")
    services = context(request).services
    if not _FORMS.claim(form_id):
        return render(request, "webhook_again.html", status=409, viewer=viewer)
    try:
        with services.audit.atomic():
            endpoint, secret = services.webhooks.create(
                principal.org_id, form.url, list(form.events), form.description
            )
            services.audit.record(
                principal.org_id, principal.actor, "webhook.created", target_id=endpoint.id,
                details=created_details(endpoint),
            )  # fmt: skip
    except InvalidRequest as exc:
        _FORMS.release(form_id)
        field = exc.param if exc.param in FIELDS else "form"
        return _form_page(request, viewer, status=400, errors={field: exc.message}, form=form)
    except BaseException:
        _FORMS.release(form_id)
        raise
    return render(
        request, "webhook_created.html", viewer=viewer, endpoint=endpoint, secret=secret,
        event_types=EVENT_TYPES,
    )  # fmt: skip


def _endpoint(request: Request, principal: Principal, webhook_id: str) -> WebhookEndpoint:
    """The organization's endpoint (404 for an unknown id, or another organization's)."""
    endpoints = context(request).services.webhooks.endpoints(principal.org_id)
    found = next((e for e in endpoints if e.id == webhook_id), None)
    if found is None:
        raise HTTPException(404)
    return found


@router.get(PATH + "/{webhook_id}/delete")
def delete_page(request: Request, viewer: CurrentMember, webhook_id: str) -> Response:
    principal = _allowed(request, viewer, "webhooks.delete")
    endpoint = _endpoint(request, principal, webhook_id)
    return render(
        request, "confirm.html", viewer=viewer, heading="Delete webhook endpoint",
        message=f"{endpoint.url} is sent no more events, and the events not delivered to it yet "
        "are dropped. This cannot be undone.",
        action=f"{PATH}/{endpoint.id}/delete", button="Delete endpoint", back=PATH,
    )  # fmt: skip


@router.post(PATH + "/{webhook_id}/delete")
def delete_webhook(request: Request, viewer: CurrentMember, webhook_id: str) -> Response:
    principal = _allowed(request, viewer, "webhooks.delete")
    services = context(request).services
    try:
        with services.audit.atomic():
            gone = services.webhooks.delete(principal.org_id, webhook_id)
            services.audit.record(
                principal.org_id, principal.actor, "webhook.deleted", target_id=gone.id,
                details=deleted_details(gone),
            )  # fmt: skip
    except NotFound:
        raise HTTPException(404) from None
    raise Redirect(PATH)
