"""The dashboard's Usage page against a real keyplane and the simulator: what it shows adds up to
the usage records, exactly, per project too."""

from __future__ import annotations

import httpx
from test_accounts_web import OWNER_PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, kp  # noqa: F401  (fixtures)

from conftest import Keyplane
from keyplane.audit.models import Actor, ActorType
from keyplane.usage.pricing import format_cost


def chat(kp: Keyplane, model: str) -> None:  # noqa: F811
    r = httpx.post(
        kp.base_url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
        headers={"authorization": f"Bearer {kp.key}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200


def test_usage_shows_the_months_spend_per_day_and_model_and_the_latest_requests(
    kp: Keyplane,  # noqa: F811
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
    kp: Keyplane,  # noqa: F811
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
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """What is billed per image, per second of audio or per character shows in those units, not
    as 0 / 0 tokens; a chat request still shows its tokens, and an image model priced by tokens
    both."""
    auth = {"authorization": f"Bearer {kp.key}"}
    r = httpx.post(kp.base_url + "/images/generations", headers=auth, timeout=30,
                   json={"model": "dall-e-2", "prompt": "a cat", "n": 2, "size": "256x256"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = httpx.post(kp.base_url + "/audio/speech", headers=auth, timeout=30,
                   json={"model": "tts-1", "voice": "alloy", "input": "Hello there"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = httpx.post(kp.base_url + "/images/generations", headers=auth, timeout=30,
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
