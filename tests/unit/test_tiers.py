"""Usage tiers: the shipped table, promotion to the second, progress, and per-model limits."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.limits import ModelLimits, Tier, TierTable, base_model
from keyplane.limits.tiers import DAY_S

TABLE = TierTable.load()
DOLLAR = 1_000_000
PAID_AT = 1_800_000_000.0  # the first successful payment
MODELS = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini",
    "text-embedding-3-small", "text-embedding-3-large", "whisper-1", "dall-e-3",
    "sim-chat", "sim-embed", "some-other-model",
)  # fmt: skip


def test_shipped_tiers_and_criteria() -> None:
    rows = [
        (t.id, t.name, t.paid_micro_usd // DOLLAR, t.days, t.monthly_usage_limit_micro_usd)
        for t in TABLE.tiers
    ]
    assert rows == [
        ("free", "Free", 0, 0, 100 * DOLLAR),
        ("tier-1", "Tier 1", 5, 0, 100 * DOLLAR),
        ("tier-2", "Tier 2", 50, 7, 500 * DOLLAR),
        ("tier-3", "Tier 3", 100, 7, 1_000 * DOLLAR),
        ("tier-4", "Tier 4", 250, 14, 5_000 * DOLLAR),
        ("tier-5", "Tier 5", 1_000, 30, 200_000 * DOLLAR),
    ]
    assert [t.rank for t in TABLE.tiers] == list(range(6))
    assert resources.files("keyplane.limits").joinpath("tiers.toml").is_file()


def test_fifty_dollars_on_day_zero_reaches_tier_2_exactly_after_seven_days() -> None:
    paid = 50 * DOLLAR
    assert TABLE.tier_for(paid, PAID_AT, PAID_AT).id == "tier-1"
    assert TABLE.tier_for(paid, PAID_AT, PAID_AT + 7 * DAY_S - 1).id == "tier-1"
    assert TABLE.tier_for(paid, PAID_AT, PAID_AT + 7 * DAY_S).id == "tier-2"
    assert TABLE.tier_for(paid - 1, PAID_AT, PAID_AT + 365 * DAY_S).id == "tier-1"


def test_both_criteria_must_hold() -> None:
    assert TABLE.tier_for(0, None, PAID_AT).id == "free"
    assert TABLE.tier_for(5 * DOLLAR - 1, PAID_AT, PAID_AT).id == "free"
    assert TABLE.tier_for(5 * DOLLAR, PAID_AT, PAID_AT).id == "tier-1"
    assert TABLE.tier_for(5_000 * DOLLAR, PAID_AT, PAID_AT + 13 * DAY_S).id == "tier-3"
    assert TABLE.tier_for(5_000 * DOLLAR, PAID_AT, PAID_AT + 30 * DAY_S).id == "tier-5"
    # No first payment on record: no days have passed, whatever the amount.
    assert TABLE.tier_for(5_000 * DOLLAR, None, PAID_AT).id == "tier-1"


@given(
    current=st.sampled_from(TABLE.tiers),
    paid=st.integers(0, 2_000 * DOLLAR),
    days=st.one_of(st.none(), st.integers(0, 60)),
)
def test_never_demotes(current: Tier, paid: int, days: int | None) -> None:
    first = None if days is None else PAID_AT
    now = PAID_AT + (days or 0) * DAY_S
    tier = TABLE.tier_for(paid, first, now, current=current)
    qualified = TABLE.tier_for(paid, first, now)
    assert tier.rank == max(qualified.rank, current.rank)


def test_progress_to_the_next_tier() -> None:
    now = PAID_AT + 3 * DAY_S + 3600
    p = TABLE.progress(TABLE.get("tier-1"), 30 * DOLLAR, PAID_AT, now)
    assert p.current.id == "tier-1"
    assert p.next is not None and p.next.id == "tier-2"
    assert p.paid is not None and p.days is not None
    assert (p.paid.paid_micro_usd, p.paid.needed_micro_usd) == (30 * DOLLAR, 50 * DOLLAR)
    assert (p.paid.remaining_micro_usd, p.paid.met) == (20 * DOLLAR, False)
    assert (p.days.passed, p.days.needed, p.days.met) == (3, 7, False)
    assert p.days.met_at == PAID_AT + 7 * DAY_S
    assert not p.eligible

    done = TABLE.progress(TABLE.get("tier-1"), 60 * DOLLAR, PAID_AT, PAID_AT + 7 * DAY_S)
    assert done.paid is not None and done.days is not None
    assert done.paid.met and done.days.met and done.eligible
    assert done.paid.remaining_micro_usd == 0


def test_progress_before_any_payment_and_at_the_top() -> None:
    p = TABLE.progress(TABLE.lowest, 0, None, PAID_AT)
    assert p.next is not None and p.next.id == "tier-1"
    assert p.days is not None and p.paid is not None
    assert (p.days.passed, p.days.needed, p.days.met, p.days.met_at) == (0, 0, True, None)
    assert p.paid.remaining_micro_usd == 5 * DOLLAR
    top = TABLE.progress(TABLE.get("tier-5"), 0, PAID_AT, PAID_AT)
    assert (top.next, top.paid, top.days, top.eligible) == (None, None, None, False)


def test_limits_per_model_snapshot_and_default() -> None:
    tier1 = TABLE.get("tier-1")
    assert tier1.limits_for("gpt-4o-mini") == ModelLimits(rpm=500, tpm=200_000, rpd=10_000)
    assert tier1.limits_for("gpt-4o-mini-2024-07-18") == tier1.limits_for("gpt-4o-mini")
    assert tier1.limits_for("gpt-4o-2024-08-06") == ModelLimits(rpm=500, tpm=30_000)
    assert tier1.limits_for("no-such-model") == tier1.limits["*"]
    assert tier1.limits_for("dall-e-3").images_per_min == 5
    assert TABLE.lowest.limits_for("gpt-4o") == TABLE.lowest.limits["*"]
    assert base_model("gpt-4.1-mini-2025-04-14") == "gpt-4.1-mini"
    assert base_model("ft:gpt-4o-mini:acme::abc") == "ft:gpt-4o-mini:acme::abc"


@pytest.mark.parametrize("model", MODELS)
def test_promotion_never_lowers_a_limit(model: str) -> None:
    for lower, higher in zip(TABLE.tiers, TABLE.tiers[1:], strict=False):
        a, b = lower.limits_for(model), higher.limits_for(model)
        for name in ("rpm", "tpm", "rpd", "images_per_min", "audio_mb_per_min"):
            before, after = getattr(a, name), getattr(b, name)
            if before is not None and after is not None:
                assert after >= before, (model, lower.id, higher.id, name)
            if before is None:
                assert after is None, (model, lower.id, higher.id, name)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tiers.toml"
    path.write_text(body)
    return path


def test_operator_files_override_and_extend(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
[[tier]]
id = "tier-1"
monthly_usage_limit = "250.50"
[tier.limits]
gpt-4o-mini = { rpm = 100, tpm = 5_000 }
my-model = { rpm = 7 }

[[tier]]
id = "tier-6"
name = "Tier 6"
paid = "5000"
days = 60
monthly_usage_limit = "1000000"
[tier.limits]
"*" = { rpm = 50_000, tpm = 300_000_000 }
""",
    )
    table = TierTable.load([extra])
    tier1 = table.get("tier-1")
    assert tier1.monthly_usage_limit_micro_usd == 250_500_000
    assert tier1.paid_micro_usd == 5 * DOLLAR  # fields not given are kept
    assert tier1.limits_for("gpt-4o-mini") == ModelLimits(rpm=100, tpm=5_000)
    assert tier1.limits_for("gpt-4o") == ModelLimits(rpm=500, tpm=30_000)
    assert tier1.limits_for("my-model") == ModelLimits(rpm=7)
    assert [t.id for t in table.tiers][-1] == "tier-6"
    assert table.next_after(table.get("tier-5")) == table.get("tier-6")
    assert table.tier_for(5_000 * DOLLAR, PAID_AT, PAID_AT + 60 * DAY_S).id == "tier-6"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('[[tier]]\nid = "tier-1"\nmonthly_usage_limit = 100\n', "as strings"),
        ('[[tier]]\nid = "tier-1"\nmonthly_usage_limit = "0.0000001"\n', "finer than"),
        ('[[tier]]\nid = "tier-1"\ncolour = "red"\n', "unknown fields"),
        ('[[tier]]\nid = "tier-1"\n[tier.limits]\nx = { rpm = 0 }\n', "positive integer"),
        ('[[tier]]\nid = "tier-1"\n[tier.limits]\nx = { rpm = true }\n', "positive integer"),
        ('[[tier]]\nid = "tier-1"\n[tier.limits]\nx = { rpm = 1.5 }\n', "positive integer"),
        ('[[tier]]\nid = "tier-1"\n[tier.limits]\nx = { rps = 1 }\n', "unknown fields"),
        ('[[tier]]\nid = "tier-1"\ndays = -1\n', "days"),
        ('[[tier]]\nid = "new"\nname = "New"\npaid = "1"\ndays = 0\n', "missing"),
        (
            '[[tier]]\nid = "new"\nname = "New"\npaid = "1"\ndays = 0\n'
            'monthly_usage_limit = "1"\n[tier.limits]\ngpt-4o = { rpm = 1 }\n',
            '"\\*" limits row',
        ),
        (
            '[[tier]]\nid = "new"\nname = "New"\npaid = "2000"\ndays = 1\n'
            'monthly_usage_limit = "1"\n[tier.limits]\n"*" = { rpm = 1 }\n',
            "must ask for more",
        ),
        ('[[tier]]\nname = "No id"\n', "needs an id"),
    ],
)
def test_bad_operator_files_are_refused(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TierTable.load([write(tmp_path, body)])
