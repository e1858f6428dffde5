"""A long fuzz of the dashboard's forms (BRIEF C12: bad input of any kind is a form error or a
4xx, never a 500). Opt-in, out of CI: ``KEYPLANE_FUZZ=<examples> pytest
tests/integration/test_fuzz_dashboard.py`` (``KEYPLANE_FUZZ_DB=postgresql``: on a fresh
PostgreSQL database; long runs need ``--timeout=0``, ``-s`` shows what the forms answered).
Random, not derandomized: each run tries new inputs.

An Owner signed in crawls the dashboard's pages and notes every form on them (its action, its
fields, its hidden values); each example posts one of those forms, with its CSRF token, with
hostile values in some fields: NUL, lone surrogates and invalid UTF-8 percent-encoded, very long
strings, a field sent several times where one value is expected, numbers no field takes.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_accounts_web import OWNER_PASSWORD, Browser

from conftest import Keyplane, fresh_postgres, start_keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import Actor, ActorType
from keyplane.simulator import SimulatorConfig, create_app
from kptest import ServerThread

EXAMPLES = int(os.environ.get("KEYPLANE_FUZZ", "0"))
pytestmark = pytest.mark.skipif(not EXAMPLES, reason="opt-in: KEYPLANE_FUZZ=<examples>")

SEEDS = ["/", "/api-keys", "/api-keys/new", "/admin-keys", "/admin-keys/new", "/projects",
         "/members", "/limits", "/usage",
         "/webhooks", "/webhooks/new", "/billing", "/billing/preferences", "/billing/purchase",
         "/billing/payment-methods", "/billing/payment-methods/new", "/billing/history",
         "/account/security", "/profile", "/audit-log", "/members/invite"]  # fmt: skip
# Forms that end the session or the Owner's membership (the fuzz would lock itself out), or remove
# what the other forms act on (the project, the keys).
SKIP = ("/logout", "/members/leave", "/members/user-", "/account/totp/disable",
        "/account/recovery-codes", "/archive", "/api-keys/key_", "/admin-keys/key_")  # fmt: skip


@dataclass
class Form:
    action: str
    page: str = ""  # where it is: read again before each post, for fresh hidden values
    fields: dict[str, str] = field(default_factory=dict)  # name -> the value the page set


def forms_of(page: str) -> list[Form]:
    found = []
    for attrs, body in re.findall(r"<form([^>]*)>(.*?)</form>", page, re.S):
        if 'method="post"' not in attrs.lower():
            continue
        action = re.search(r'action="([^"]*)"', attrs)
        if action is None:
            continue
        form = Form(html.unescape(action.group(1)))
        for tag in re.findall(r"<(?:input|select|textarea)[^>]*>", body):
            name = re.search(r'name="([^"]+)"', tag)
            if name is None:
                continue
            value = re.search(r'value="([^"]*)"', tag)
            form.fields.setdefault(
                html.unescape(name.group(1)), html.unescape(value.group(1)) if value else ""
            )
        found.append(form)
    return found


ANONYMOUS = ["/login", "/signup", "/password/forgot", "/password/reset?token=abc", "/verify",
             "/login/totp"]  # fmt: skip


@dataclass
class Site:
    kp: Keyplane
    browser: Browser
    forms: list[Form]
    anonymous: Browser
    anonymous_forms: list[Form]

    def ensure_signed_in(self) -> None:
        if self.browser.client.get("/api-keys").status_code != 200:
            self.browser.log_in(self.kp.owner.email, OWNER_PASSWORD)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    sim = ServerThread(create_app(SimulatorConfig())).start()
    with contextlib.ExitStack() as stack:
        url = ""
        if os.environ.get("KEYPLANE_FUZZ_DB") == "postgresql":
            url = stack.enter_context(fresh_postgres())
        kp = start_keyplane(tmp_path_factory.mktemp("dash"), sim.url + "/v1", database_url=url)
        stack.callback(sim.stop)
        stack.callback(kp.container.close)
        stack.callback(kp.server.stop)
        kp.new_key("second")
        c = kp.container  # something to act on: a webhook, an alert, an invitation
        c.webhooks.create(kp.org.id, "https://hooks.example/kp", ["api_key.leaked"])
        c.billing.add_alert(kp.org.id, 1_000_000)
        owner = Actor(ActorType.SESSION, "sess_fuzz", user_id=kp.owner.id, email=kp.owner.email)
        c.orgs.invite(owner, kp.org.id, "invitee@example.com", OrgRole.READER)
        browser = Browser(httpx.Client(base_url=kp.server.url, follow_redirects=False, timeout=30))
        stack.callback(browser.close)
        browser.log_in_named(kp.owner.email, OWNER_PASSWORD)
        forms: dict[tuple[str, tuple[str, ...]], Form] = {}
        seen: set[str] = set()
        queue = list(SEEDS)
        while queue and len(seen) < 150:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            page = browser.client.get(path)
            if page.status_code != 200 or "text/html" not in page.headers.get("content-type", ""):
                continue
            for form in forms_of(page.text):
                form.page = path
                forms.setdefault((form.action, tuple(sorted(form.fields))), form)
            for link in re.findall(r'href="(/[^"#?]*)', page.text):
                if not link.startswith(("/static", "/v1", "/logout")) and link not in seen:
                    queue.append(html.unescape(link))
        usable = [f for f in forms.values() if not any(s in f.action for s in SKIP)]
        print(f"\n{len(usable)} forms on {len(seen)} pages:", sorted({f.action for f in usable}))
        anonymous = Browser(
            httpx.Client(base_url=kp.server.url, follow_redirects=False, timeout=30)
        )
        stack.callback(anonymous.close)
        anonymous_forms = {}
        for path in ANONYMOUS:
            for form in forms_of(anonymous.client.get(path).text):
                form.page = path
                anonymous_forms[form.action] = form
        print("anonymous forms:", sorted(anonymous_forms))
        yield Site(kp, browser, usable, anonymous, list(anonymous_forms.values()))


HOSTILE: list[bytes] = [
    b"\x00", b"a\x00b", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xff", b"\xc0\xaf", b"\xef\xbf\xbf",
    b"x" * 100_000, b"owner@example.com", b"correct horse battery", b"1e309", b"NaN", b"Infinity", b"-0", b"-1", b"99999999999999999999999999",
    b"9" * 5000, b"0x10", b"1_000", b"\xd9\xa3", b"$1,000.00", b"  ", b"", b"\n", b"\t5",
    b"<script>", b"../", b"key_", b"user-", b"2001:db8::/129", b"0.0.0.0/0", b"*",
    b"https://[::1", b"http://127.0.0.1:1/", b"\xf0\x9f\x92\xa5" * 1000, b"true", b"on",
]  # fmt: skip


def encode(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"&".join(
        urllib.parse.quote_from_bytes(k).encode() + b"=" + urllib.parse.quote_from_bytes(v).encode()
        for k, v in pairs
    )


@settings(max_examples=max(1, EXAMPLES), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(data=st.data())
def test_hostile_form_values_never_give_a_server_error(site: Site, data: Any) -> None:
    site.ensure_signed_in()
    signed_in = data.draw(st.integers(0, 3)) > 0
    browser = site.browser if signed_in else site.anonymous
    form = data.draw(
        st.sampled_from(site.forms if signed_in else site.anonymous_forms), label="form"
    )
    page = browser.client.get(form.page).text
    token = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert token is not None
    fresh = next((f for f in forms_of(page) if f.action == form.action), form)
    pairs = [(k.encode(), v.encode()) for k, v in fresh.fields.items() if k != "csrf_token"]
    names = [k for k, _ in pairs] + [b"name", b"amount", b"email", b"url", b"events"]
    for _ in range(data.draw(st.integers(1, 4))):
        name = data.draw(st.sampled_from(names))
        value = data.draw(st.sampled_from(HOSTILE) | st.binary(max_size=20))
        how = data.draw(st.sampled_from(["replace", "repeat", "drop"]))
        if how == "replace":
            pairs = [(k, v) for k, v in pairs if k != name] + [(name, value)]
        elif how == "repeat":
            pairs += [(name, value), (name, value)]
        else:
            pairs = [(k, v) for k, v in pairs if k != name]
    pairs.insert(0, (b"csrf_token", token.group(1).encode()))
    kind = data.draw(st.sampled_from(["urlencoded", "urlencoded", "multipart", "raw"]))
    if kind == "multipart":
        boundary = b"fuzzb0undary"
        body = b"".join(
            b"--" + boundary + b'\r\ncontent-disposition: form-data; name="' + k + b'"\r\n\r\n'
            + v + b"\r\n" for k, v in pairs
        ) + b"--" + boundary + b"--\r\n"  # fmt: skip
        content_type = "multipart/form-data; boundary=fuzzb0undary"
    elif kind == "raw":  # bytes as they are, not percent-encoded
        body = b"&".join(k + b"=" + v for k, v in pairs)
        content_type = "application/x-www-form-urlencoded"
    else:
        body = encode(pairs)
        content_type = "application/x-www-form-urlencoded"
    resp = browser.client.post(form.action, content=body, headers={"content-type": content_type})
    STATUSES[
        re.sub(r"/(key|proj|sa|we|user|invite)[_-]\w+", "/{id}", form.action), resp.status_code
    ] += 1
    assert resp.status_code < 500, (form.action, resp.status_code, resp.text[:300])


STATUSES: Counter[tuple[str, int]] = Counter()


def test_what_the_forms_answered() -> None:
    """(Last: how many of each answer each form gave, shown with ``-s``.)"""
    print("\n".join(f"{a} {s}: {n}" for (a, s), n in sorted(STATUSES.items())))
