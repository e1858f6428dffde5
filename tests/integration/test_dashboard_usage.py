"""The dashboard's Usage page against a real keyplane and the simulator: what it shows adds up to
the usage records, exactly, per project too."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of
from test_dashboard_keys import SignIn, browser_for, join  # noqa: F401  (fixtures)

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import Actor, ActorType
from keyplane.clock import FrozenClock
from keyplane.keys.format import KeyKind
from keyplane.usage.pricing import format_cost
from kptest import ServerThread, just_before_month_end


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    """A keyplane whose clock stands still half a second before a month ends: "this month" is the
    same month when the requests are made and when the page shows them (and the tests would see
    a page that read the wall clock instead)."""
    clock = FrozenClock(just_before_month_end())
    instance = start_keyplane(tmp_path, simulator.url + "/v1", clock=clock)
    yield instance
    instance.server.stop()
    instance.container.close()


def chat(kp: Keyplane, model: str) -> None:
    r = kphttp.post(
        kp.base_url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 200


def test_usage_shows_the_months_spend_per_day_and_model_and_the_latest_requests(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        chat(kp, model)
    records = kp.usage(expect=3)
    total = sum(r.cost_micro_usd for r in records)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/usage")
    text = text_of(page)
    assert page.status_code == 200 and f"${format_cost(total)} spent · 3 requests" in text
    assert all(r.request_id in page.text for r in records)
    mini = sum(r.cost_micro_usd for r in records if r.model == "gpt-4o-mini")
    assert "gpt-4o-mini 2 " in text and f"${format_cost(mini)}" in text
    assert page.text.count("<rect ") >= 1  # a bar per day of the month so far

    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    other = kp.container.orgs.create_project(setup, kp.org.id, "Quiet project")
    page = owner.get(f"/usage?project={other.id}")
    assert "$0.00 spent · 0 requests" in text_of(page) and "No requests yet" in text_of(page)
    assert not any(r.request_id in page.text for r in records)
    page = owner.get(f"/usage?project={kp.project.id}")
    assert f"${format_cost(total)} spent · 3 requests" in text_of(page)
    page = owner.get("/usage?project=proj_nope")  # a project of no (or another) organization
    assert page.status_code == 404 and not any(r.request_id in page.text for r in records)


def test_pages_name_an_icon_and_favicon_ico_leads_to_it(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    assert '<link rel="icon" href="/static/favicon.svg"' in owner.get("/usage").text
    r = owner.get("/favicon.ico")
    assert r.status_code == 301 and r.headers["location"] == "/static/favicon.svg"
    icon = owner.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")


def test_usage_shows_images_audio_and_speech_in_their_units(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    """What is billed per image, per second of audio or per character shows in those units, not
    as 0 / 0 tokens; a chat request still shows its tokens, and an image model priced by tokens
    both."""
    auth = {"authorization": f"Bearer {kp.key}"}
    r = kphttp.post(kp.base_url + "/images/generations", headers=auth,
                    json={"model": "dall-e-2", "prompt": "a cat", "n": 2, "size": "256x256"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = kphttp.post(kp.base_url + "/audio/speech", headers=auth,
                    json={"model": "tts-1", "voice": "alloy", "input": "Hello there"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = kphttp.post(kp.base_url + "/images/generations", headers=auth,
                    json={"model": "gpt-image-1", "prompt": "a dog", "quality": "low",
                          "size": "1024x1024"})  # fmt: skip
    assert r.status_code == 200, r.text
    chat(kp, "gpt-4o-mini")
    records = {r.endpoint: r for r in kp.usage(expect=4) if r.model != "gpt-image-1"}
    page = browser_for("owner@example.com", OWNER_PASSWORD).get("/usage")
    text = text_of(page)
    assert records["images.generations"].images == 2 and "2 images" in text
    assert "1 image · 2 / 272 tokens" in text  # an image model priced by tokens: both
    assert records["audio.speech"].characters == 11 and "11 characters" in text
    chat_record = records["chat.completions"]
    used = f"{chat_record.input_tokens:,} / {chat_record.output_tokens:,} tokens"
    assert used in text and "0 / 0 tokens" not in text


NOV_20 = 1_795_176_000  # 2026-11-20 12:00 UTC: the organization is created then
DEC_6 = 1_796_551_200  # 2026-12-06 10:00 UTC
HOSTILE = '=HYPERLINK("http://x")'


@pytest.fixture
def dated(tmp_path: Path, simulator: ServerThread) -> Iterator[tuple[Keyplane, FrozenClock]]:
    """A keyplane whose clock the test moves: created on 2026-11-20."""
    clock = FrozenClock(NOV_20)
    instance = start_keyplane(tmp_path, simulator.url + "/v1", clock=clock)
    yield instance, clock
    instance.server.stop()


@pytest.fixture
def sign_in(dated: tuple[Keyplane, FrozenClock]) -> Iterator[SignIn]:
    opened: list[Browser] = []

    def open_as(email: str, password: str) -> Browser:
        b = Browser(kphttp.Client(base_url=dated[0].server.url, follow_redirects=False))
        opened.append(b)
        b.log_in_named(email, password)
        return b

    yield open_as
    for b in opened:
        b.close()


def chat_with(plane: Keyplane, secret: str) -> None:
    r = kphttp.post(
        plane.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 20},
        headers={"authorization": f"Bearer {secret}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text


def hrefs(page: httpx.Response) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', page.text)]


def test_earlier_months_show_their_own_requests_with_links_between_months(
    dated: tuple[Keyplane, FrozenClock], sign_in: SignIn
) -> None:
    plane, clock = dated
    chat(plane, "gpt-4o-mini")
    chat(plane, "gpt-4o")
    november = plane.usage(expect=2)
    clock.set(DEC_6)
    chat(plane, "gpt-4o-mini")
    december = [
        r for r in plane.usage(expect=3) if r.request_id not in {n.request_id for n in november}
    ]
    owner = sign_in("owner@example.com", OWNER_PASSWORD)

    page = owner.get("/usage")  # this month
    text = text_of(page)
    assert "December 2026 (so far)" in text
    assert f"${format_cost(december[0].cost_micro_usd)} spent · 1 request" in text
    assert december[0].request_id in page.text
    assert not any(r.request_id in page.text for r in november)
    assert "/usage?month=2026-11" in hrefs(page) and not any("2027-01" in h for h in hrefs(page))
    assert "/usage/export?month=2026-12" in hrefs(page)

    page = owner.get("/usage?month=2026-11")
    text = text_of(page)
    total = sum(r.cost_micro_usd for r in november)
    assert page.status_code == 200 and "November 2026" in text and "(so far)" not in text
    assert f"${format_cost(total)} spent · 2 requests" in text
    assert all(r.request_id in page.text for r in november)
    assert december[0].request_id not in page.text
    assert page.text.count("<rect ") == 30  # a bar per day of the whole month
    # Next leads back; there is nothing before the organization's first month.
    assert "/usage?month=2026-12" in hrefs(page) and not any("2026-10" in h for h in hrefs(page))
    assert "/usage/export?month=2026-11" in hrefs(page)
    assert '<input type="hidden" name="month" value="2026-11">' in page.text  # kept by "Show"

    # The project chosen stays chosen from month to month.
    project = plane.project.id
    page = owner.get(f"/usage?month=2026-11&project={project}")
    assert f"${format_cost(total)} spent · 2 requests" in text_of(page)
    links = hrefs(page)
    assert f"/usage?month=2026-12&project={project}" in links
    assert f"/usage/export?month=2026-11&project={project}" in links
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=plane.owner.id, email=plane.owner.email)
    quiet = plane.container.orgs.create_project(setup, plane.org.id, "Quiet project")
    page = owner.get(f"/usage?month=2026-11&project={quiet.id}")
    assert "$0.00 spent · 0 requests" in text_of(page)
    assert "No requests in November 2026 in Quiet project" in text_of(page)

    for month in ("2026-10", "2027-01"):  # before the organization; not yet
        page = owner.get(f"/usage?month={month}")
        assert page.status_code == 404 and "Page not found" in page.text
    for month in ("2026-13", "2026-1", "nov", "2026-11-01", "२०२६-११"):
        for path in ("/usage", "/usage/export"):
            page = owner.get(path, params={"month": month})
            assert page.status_code == 400, (path, month)
            assert "Choose a month as YYYY-MM" in text_of(page)


def exported(browser: Browser, query: str) -> tuple[httpx.Response, list[dict[str, str]]]:
    response = browser.get("/usage/export" + query)
    assert response.status_code == 200, response.text
    return response, list(csv.DictReader(io.StringIO(response.text)))


def test_the_csv_export_has_one_row_per_usage_record_exactly(
    dated: tuple[Keyplane, FrozenClock], sign_in: SignIn
) -> None:
    plane, clock = dated
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=plane.owner.id, email=plane.owner.email)
    plane.container.orgs.rename_project(setup, plane.org.id, plane.project.id, HOSTILE)
    _, hostile_secret = plane.new_key(HOSTILE)
    other = plane.container.orgs.create_project(setup, plane.org.id, "-2+3 project")
    _, other_secret = plane.container.keys.create(
        kind=KeyKind.PROJECT, org_id=plane.org.id, project_id=other.id, name="@other key",
        owner_type="user", owner_id=plane.owner.id, created_by=plane.owner.id,
    )  # fmt: skip
    for secret in (plane.key, hostile_secret, hostile_secret, other_secret):
        chat_with(plane, secret)
    november = {r.request_id: r for r in plane.usage(expect=4)}
    clock.set(DEC_6)
    chat_with(plane, plane.key)  # December's: in no November export
    plane.usage(expect=5)
    keys = {k.id: k for k in plane.container.keys.list(plane.org.id)}
    owner = sign_in("owner@example.com", OWNER_PASSWORD)

    response, rows = exported(owner, "?month=2026-11")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="keyplane-usage-2026-11.csv"'
    )
    assert response.text.startswith(
        "time,request_id,project_id,project_name,key_id,key_name,owner_type,owner_id,model,"
        "endpoint,input_tokens,cached_input_tokens,input_audio_tokens,output_tokens,"
        "output_audio_tokens,images,audio_seconds,characters,stream,status,outcome,estimated,"
        "latency_ms,period,cost_usd\r\n"
    )
    assert sorted(row["request_id"] for row in rows) == sorted(november)
    assert [(r["time"], r["request_id"]) for r in rows] == sorted(
        (r["time"], r["request_id"]) for r in rows
    )
    names = {plane.project.id: "'" + HOSTILE, other.id: "'-2+3 project"}
    for row in rows:
        record = november[row["request_id"]]
        key = keys[record.key_id]
        cost = row.pop("cost_usd")
        assert row == {
            "time": dt.datetime.fromtimestamp(record.created_at, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "request_id": record.request_id, "project_id": record.project_id,
            "project_name": names[record.project_id], "key_id": record.key_id,
            "key_name": "'" + key.name if key.name[0] in "=@" else key.name,
            "owner_type": "user", "owner_id": plane.owner.id,
            "model": record.model, "endpoint": record.endpoint,
            "input_tokens": str(record.input_tokens),
            "cached_input_tokens": str(record.cached_input_tokens), "input_audio_tokens": "0",
            "output_tokens": str(record.output_tokens), "output_audio_tokens": "0",
            "images": "0", "audio_seconds": "0", "characters": "0", "stream": "no",
            "status": "200", "outcome": "completed",
            "estimated": "yes" if record.tokens_estimated else "no",
            "latency_ms": str(record.latency_ms), "period": "2026-11",
        }  # fmt: skip
        assert Decimal(cost) * 1_000_000 == record.cost_micro_usd
        assert re.fullmatch(r"\d+\.\d{6}", cost)
        row["cost_usd"] = cost
    total = sum(r.cost_micro_usd for r in november.values())
    assert total > 0
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(total) / Decimal(1_000_000)
    assert "'" + HOSTILE in {row["key_name"] for row in rows}
    assert "'@other key" in {row["key_name"] for row in rows}
    assert not any(secret in response.text for secret in (plane.key, hostile_secret, other_secret))

    # One project's records only, named so in the file name.
    response, rows = exported(owner, f"?month=2026-11&project={other.id}")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="keyplane-usage-2026-11-{other.id}.csv"'
    )
    assert [row["request_id"] for row in rows] == [
        r.request_id for r in november.values() if r.project_id == other.id
    ]
    # December's, by default this month's.
    response, rows = exported(owner, "")
    assert len(rows) == 1
    assert rows[0]["request_id"] not in november and rows[0]["time"].startswith("2026-12-06T")
    # A project not of the organization is not found, as on the page.
    assert owner.get("/usage/export?project=proj_nope").status_code == 404


def test_readers_export_usage_and_anonymous_visitors_are_sent_to_log_in(
    dated: tuple[Keyplane, FrozenClock], sign_in: SignIn
) -> None:
    plane, _ = dated
    chat(plane, "gpt-4o-mini")
    [record] = plane.usage(expect=1)
    join(plane, "reader@example.com", OrgRole.READER)
    reader = sign_in("reader@example.com", PASSWORD)
    page = reader.get("/usage")
    assert page.status_code == 200 and "/usage/export?month=2026-11" in hrefs(page)
    _, rows = exported(reader, "?month=2026-11")
    assert [row["request_id"] for row in rows] == [record.request_id]

    with kphttp.Client(base_url=plane.server.url, follow_redirects=False) as anonymous:
        r = anonymous.get("/usage/export?month=2026-11")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Fusage%2Fexport%3Fmonth%3D2026-11"
        assert record.request_id not in r.text
