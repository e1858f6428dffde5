"""The GCRA limiter on a simulated clock: window bounds, accuracy, TPM reservations, atomicity."""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.limits import (
    Cost,
    Decision,
    Dimension,
    InMemoryRateLimiter,
    LimitScope,
    ModelLimits,
    burst_for,
    effective,
    format_reset,
    limits_from,
    raised_fields,
    rate_limit_headers,
    rejection_message,
    scope_id,
)
from keyplane.limits.ratelimit import with_changes

T0 = 1_800_000_000.0  # Unix seconds, so the limiter's epoch handling is exercised
MINUTE = 60.0


def org(limits: ModelLimits, model: str = "gpt-4o-mini") -> LimitScope:
    return LimitScope(scope_id("org", "org-1", model), limits)


def max_in_window(times: Sequence[float], weights: Sequence[int], window: float) -> int:
    """The largest total weight of events inside any half-open window [t, t + window)."""
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    best = 0
    for i, start in enumerate(times):
        j = bisect.bisect_left(times, start + window)
        best = max(best, prefix[j] - prefix[i])
    return best


def offered(load: float, limit: int, minutes: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = round(load * limit * minutes)
    return sorted(rng.uniform(0, minutes * MINUTE) for _ in range(n))


def run_rpm(
    limit: int, load: float, seed: int, rpm_burst_s: float = 10.0, minutes: int = 10
) -> tuple[list[float], list[float], int]:
    """Offers random arrivals; returns them, the admitted ones and the false rejections."""
    limiter = InMemoryRateLimiter(rpm_burst_s=rpm_burst_s)
    scope = [org(ModelLimits(rpm=limit))]
    admitted: list[float] = []
    false_rejections = 0
    arrivals = offered(load, limit, minutes, seed)
    for t in arrivals:
        if limiter.admit(scope, Cost(), T0 + t).admitted:
            admitted.append(t)
        else:
            # False: admitting it would still leave the trailing 60 s window within the limit.
            trailing = len(admitted) - bisect.bisect_right(admitted, t - MINUTE)
            false_rejections += trailing < limit
    return arrivals, admitted, false_rejections


# --- requests per minute -------------------------------------------------------------------


@pytest.mark.parametrize("load", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rpm_60_admits_at_most_limit_plus_burst_in_every_window(load: float, seed: int) -> None:
    arrivals, admitted, false_rejections = run_rpm(60, load, seed)
    burst = burst_for(Dimension.REQUESTS, 60)
    assert burst == 10
    assert max_in_window(admitted, [1] * len(admitted), MINUTE) <= 60 + burst
    if load == 0.5:
        assert false_rejections <= 0.01 * len(arrivals)
        assert len(admitted) >= 0.99 * len(arrivals)
    if load == 3.0:
        # Over 10 minutes: the limit's 600 plus at most one burst, i.e. within 2 %.
        assert 0.98 * 600 <= len(admitted) <= 600 + burst


@pytest.mark.parametrize("rpm_burst_s", [0.0, 30.0, 60.0])
@pytest.mark.parametrize("load", [0.5, 1.0, 3.0])
def test_other_bursts_keep_their_window_bound(rpm_burst_s: float, load: float) -> None:
    burst = burst_for(Dimension.REQUESTS, 60, rpm_burst_s)
    assert burst == {0.0: 0, 30.0: 30, 60.0: 59}[rpm_burst_s]
    _, admitted, _ = run_rpm(60, load, seed=7, rpm_burst_s=rpm_burst_s)
    worst = max_in_window(admitted, [1] * len(admitted), MINUTE)
    assert worst <= 60 + burst
    if load == 3.0 and burst:
        assert worst >= 60  # the limit itself is reachable under overload


def test_burst_from_rest_then_steady_pacing() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpm=60))]
    got = [limiter.admit(scope, Cost(), T0).admitted for _ in range(12)]
    assert got == [True] * 11 + [False]  # burst 10: b + 1 at one instant
    assert not limiter.admit(scope, Cost(), T0 + 0.999).admitted
    assert limiter.admit(scope, Cost(), T0 + 1.0).admitted  # one per T = 1 s afterwards


def test_zero_burst_is_strict_pacing() -> None:
    limiter = InMemoryRateLimiter(rpm_burst_s=0)
    scope = [org(ModelLimits(rpm=60))]
    assert limiter.admit(scope, Cost(), T0).admitted
    decision = limiter.admit(scope, Cost(), T0 + 0.5)
    assert not decision.admitted
    assert decision.rejection is not None
    assert decision.rejection.retry_after == pytest.approx(0.5)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 300),
    rpm_burst_s=st.sampled_from([0.0, 1.0, 10.0, 30.0, 60.0]),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=400),
)
def test_window_bound_holds_for_any_arrivals(
    limit: int, rpm_burst_s: float, gaps: list[float]
) -> None:
    limiter = InMemoryRateLimiter(rpm_burst_s=rpm_burst_s)
    scope = [org(ModelLimits(rpm=limit))]
    t, admitted = 0.0, []
    for gap in gaps:
        t += gap
        if limiter.admit(scope, Cost(), T0 + t).admitted:
            admitted.append(t)
    bound = limit + burst_for(Dimension.REQUESTS, limit, rpm_burst_s)
    assert max_in_window(admitted, [1] * len(admitted), MINUTE) <= bound


def test_requests_per_day_allow_the_whole_day_at_once_then_pace() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpd=200))]
    assert all(limiter.admit(scope, Cost(), T0).admitted for _ in range(200))
    decision = limiter.admit(scope, Cost(), T0)
    assert decision.rejection is not None
    assert decision.rejection.dimension is Dimension.REQUESTS_PER_DAY
    assert decision.rejection.retry_after == pytest.approx(86_400 / 200)
    assert limiter.admit(scope, Cost(), T0 + 432).admitted


# --- a changed limit ------------------------------------------------------------------------


def remaining_requests(decision: Decision) -> int:
    assert decision.requests is not None
    return decision.requests.remaining


def test_a_raised_rpm_counts_what_was_used_not_the_old_wait() -> None:
    """An Owner raises a key's RPM of 2 once it is used up: the next request goes through, and
    the two already made still count against the new limit."""
    limiter = InMemoryRateLimiter()
    low = [org(ModelLimits(rpm=2))]  # burst 1: 2 at once, then one every 30 s
    assert limiter.admit(low, Cost(), T0).admitted
    assert limiter.admit(low, Cost(), T0).admitted
    assert not limiter.admit(low, Cost(), T0 + 1).admitted
    raised = [org(ModelLimits(rpm=100))]  # (a new scope object: the gateway builds one per change)
    decision = limiter.admit(raised, Cost(), T0 + 1)
    assert decision.admitted  # (kept in seconds, the old debt would have refused it for ~49 s)
    # 18 at once at 100 RPM (burst 17): ~2 used before (1 s of 60 drained), and this one.
    assert remaining_requests(decision) == 15


def test_a_tier_promotion_lifts_a_used_up_day_at_once() -> None:
    limiter = InMemoryRateLimiter()
    assert all(limiter.admit([org(ModelLimits(rpd=200))], Cost(), T0).admitted for _ in range(200))
    assert not limiter.admit([org(ModelLimits(rpd=200))], Cost(), T0 + 60).admitted
    promoted = [org(ModelLimits(rpd=10_000))]
    admitted = sum(limiter.admit(promoted, Cost(), T0 + 60).admitted for _ in range(10_000))
    assert 9_800 <= admitted <= 9_802  # the 200 used stay used (less the minute's drain)


def test_a_lowered_limit_waits_one_unit_at_most() -> None:
    """Lowered from 100 to 2 RPM with 18 used: full at once, free again after one request's
    interval (30 s), not after the 9 minutes 18 requests take at the new rate."""
    limiter = InMemoryRateLimiter()
    high = [org(ModelLimits(rpm=100))]
    assert all(limiter.admit(high, Cost(), T0).admitted for _ in range(18))
    low = [org(ModelLimits(rpm=2))]
    refused = limiter.admit(low, Cost(), T0)
    assert refused.rejection is not None
    assert refused.rejection.used == 2
    assert refused.rejection.retry_after == pytest.approx(30.0)
    assert limiter.admit(low, Cost(), T0 + 30).admitted


def test_a_new_scope_object_with_the_same_limits_keeps_the_count() -> None:
    limiter = InMemoryRateLimiter(rpm_burst_s=0)
    assert limiter.admit([org(ModelLimits(rpm=2))], Cost(), T0).admitted
    assert not limiter.admit([org(ModelLimits(rpm=2))], Cost(), T0 + 1).admitted


# --- tokens per minute ---------------------------------------------------------------------


def test_concurrent_max_tokens_never_exceed_tpm() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpm=10_000, tpm=10_000))]
    decisions = [limiter.admit(scope, Cost(tokens=1000), T0) for _ in range(15)]
    assert [d.admitted for d in decisions] == [True] * 10 + [False] * 5
    rejection = decisions[10].rejection
    assert rejection is not None
    assert (rejection.dimension, rejection.limit, rejection.used, rejection.requested) == (
        Dimension.TOKENS,
        10_000,
        10_000,
        1000,
    )
    assert rejection.retry_after == pytest.approx(6.0)  # 1000 tokens at 10k per minute


def test_settle_refunds_make_room_again() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(tpm=10_000))]
    tickets = [limiter.admit(scope, Cost(tokens=1000), T0).ticket for _ in range(10)]
    assert not limiter.admit(scope, Cost(tokens=1000), T0).admitted
    for ticket in tickets:
        assert ticket is not None
        limiter.settle(ticket, 200, T0)
    # 8,000 tokens were refunded: exactly eight more 1,000-token requests fit now.
    assert [limiter.admit(scope, Cost(tokens=1000), T0).admitted for _ in range(9)] == [
        True
    ] * 8 + [False]


def test_settle_overrun_pushes_the_next_request_back_and_settles_once() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(tpm=6000))]  # 100 tokens per second
    ticket = limiter.admit(scope, Cost(tokens=6000), T0).ticket
    assert ticket is not None
    limiter.settle(ticket, 6600, T0)
    limiter.settle(ticket, 0, T0)  # already settled: no refund
    decision = limiter.admit(scope, Cost(tokens=100), T0 + 1)
    assert decision.rejection is not None
    assert decision.rejection.used == 6500  # 600 over, minus one second's 100 drained
    assert decision.rejection.retry_after == pytest.approx(6.0)
    assert limiter.admit(scope, Cost(tokens=100), T0 + 7).admitted


@settings(max_examples=60, deadline=None)
@given(
    tpm=st.integers(1000, 50_000),
    seed=st.integers(0, 2**32),
    concurrency=st.integers(1, 8),
)
def test_admitted_token_estimates_stay_within_limit_plus_burst(
    tpm: int, seed: int, concurrency: int
) -> None:
    rng = random.Random(seed)
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(tpm=tpm))]
    times: list[float] = []
    costs: list[int] = []
    for t in sorted(rng.uniform(0, 300) for _ in range(200)):
        batch = [rng.randint(1, tpm // 4) for _ in range(rng.randint(1, concurrency))]
        admitted_now = 0
        for tokens in batch:
            if limiter.admit(scope, Cost(tokens=tokens), T0 + t).admitted:
                times.append(t)
                costs.append(tokens)
                admitted_now += tokens
        assert admitted_now <= tpm  # never more than the limit at one instant
    assert max_in_window(times, costs, MINUTE) <= tpm + burst_for(Dimension.TOKENS, tpm)


def test_a_request_larger_than_the_limit_can_never_succeed() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpm=500, tpm=10_000))]
    decision = limiter.admit(scope, Cost(tokens=10_001), T0)
    assert decision.rejection is not None
    assert decision.rejection.too_large
    assert decision.rejection.retry_after is None
    assert limiter.snapshot(T0) == {}
    assert (b"x-should-retry", b"false") in rate_limit_headers(decision)
    assert not any(name == b"retry-after" for name, _ in rate_limit_headers(decision))
    assert limiter.admit(scope, Cost(tokens=10_000), T0).admitted


def test_images_per_minute() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpm=500, images_per_min=5), "dall-e-3")]
    too_many = limiter.admit(scope, Cost(images=6), T0)
    assert too_many.rejection is not None and too_many.rejection.too_large
    assert limiter.admit(scope, Cost(images=5), T0).admitted
    later = limiter.admit(scope, Cost(images=1), T0)
    assert later.rejection is not None
    assert later.rejection.dimension is Dimension.IMAGES
    assert later.rejection.retry_after == pytest.approx(12.0)


# --- several scopes: one atomic decision ---------------------------------------------------


def three_scopes(
    org_l: ModelLimits, project_l: ModelLimits, key_l: ModelLimits
) -> list[LimitScope]:
    return [
        LimitScope(scope_id("org", "org-1", "gpt-4o-mini"), org_l),
        LimitScope(scope_id("project", "proj-1", "gpt-4o-mini"), project_l),
        LimitScope(scope_id("key", "key-1", "gpt-4o-mini"), key_l),
    ]


limit_values = st.one_of(st.none(), st.integers(1, 50))
token_limits = st.one_of(st.none(), st.integers(1, 5000))
model_limits = st.builds(ModelLimits, rpm=limit_values, tpm=token_limits, rpd=limit_values)


@settings(max_examples=200, deadline=None)
@given(
    limits=st.tuples(model_limits, model_limits, model_limits),
    steps=st.lists(
        st.tuples(st.floats(0, 3, allow_nan=False), st.integers(0, 3000)),
        min_size=1,
        max_size=60,
    ),
)
def test_a_rejected_admit_changes_no_scope(
    limits: tuple[ModelLimits, ModelLimits, ModelLimits], steps: list[tuple[float, int]]
) -> None:
    limiter = InMemoryRateLimiter()
    scopes = three_scopes(*limits)
    t = T0
    for gap, tokens in steps:
        t += gap
        before = limiter.snapshot(t)
        decision = limiter.admit(scopes, Cost(tokens=tokens), t)
        after = limiter.snapshot(t)
        if not decision.admitted:
            assert after == before
            continue
        # Admitted: every limited cell with a cost was charged exactly its cost.
        for scope in scopes:
            for dimension, limit in scope.limits.items():
                units = Cost(tokens=tokens).units(dimension)
                key = (scope.scope_id, dimension)
                charged = after.get(key, 0.0) - before.get(key, 0.0)
                assert charged == pytest.approx(units * dimension.period / limit, abs=1e-6)


def test_the_tightest_scope_is_reported() -> None:
    limiter = InMemoryRateLimiter()
    scopes = three_scopes(ModelLimits(rpm=500), ModelLimits(rpm=100), ModelLimits(rpm=2))
    assert limiter.admit(scopes, Cost(), T0).admitted
    second = limiter.admit(scopes, Cost(), T0)
    assert second.requests is not None
    assert (second.requests.limit, second.requests.remaining) == (2, 0)
    third = limiter.admit(scopes, Cost(), T0)
    assert third.rejection is not None
    assert third.rejection.scope_id == "key:key-1:gpt-4o-mini"
    assert (third.rejection.limit, third.rejection.used) == (2, 2)
    assert third.rejection.retry_after == pytest.approx(30.0)
    # The org and project were not charged for the rejected request.
    snap = limiter.snapshot(T0)
    assert snap[("org:org-1:gpt-4o-mini", Dimension.REQUESTS)] == pytest.approx(2 * 60 / 500)


def test_concurrent_threads_admit_exactly_the_capacity() -> None:
    limiter = InMemoryRateLimiter()
    scope = [org(ModelLimits(rpm=600))]  # burst 100: 101 at one instant
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [limiter.admit(scope, Cost(), T0).admitted for _ in range(50)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(results) == 101


def test_cells_at_rest_are_forgotten_once_there_are_many() -> None:
    limiter = InMemoryRateLimiter(keep=100)
    for i in range(5000):
        limiter.admit([org(ModelLimits(rpm=60, tpm=60_000), f"m{i}")], Cost(tokens=10), T0 + i)
    assert len(limiter) <= 100 + 2  # (two cells a call)


# --- overrides ------------------------------------------------------------------------------


@given(model_limits, st.one_of(st.none(), model_limits), st.one_of(st.none(), model_limits))
def test_overrides_never_raise_limits(
    org_l: ModelLimits, project_l: ModelLimits | None, key_l: ModelLimits | None
) -> None:
    eff = effective(org_l, project_l, key_l)
    for dimension in Dimension:
        given_values = [s.limit(dimension) for s in (org_l, project_l, key_l) if s is not None]
        values = [v for v in given_values if v is not None]
        assert eff.limit(dimension) == (min(values) if values else None)
        if org_l.limit(dimension) is not None:
            assert eff.limit(dimension) is not None
            assert eff.limit(dimension) <= org_l.limit(dimension)  # type: ignore[operator]


def test_raised_fields_names_what_an_override_cannot_have() -> None:
    base = ModelLimits(rpm=500, tpm=30_000)
    assert raised_fields(base, ModelLimits(rpm=600, tpm=1000, rpd=10)) == ("rpm",)
    assert effective(base, ModelLimits(rpm=600)) == base


def test_limits_must_be_positive_integers() -> None:
    for bad in (0, -1, True, 1.5, "5"):
        with pytest.raises(ValueError, match="rpm"):
            limits_from({"rpm": bad})
        # Built directly: a ValueError, or compiled (scripts/compile.py) a TypeError for a value
        # that is not an int at all.
        with pytest.raises(ValueError if isinstance(bad, int) else (ValueError, TypeError)):
            ModelLimits(rpm=bad)  # type: ignore[arg-type]
    assert limits_from({"rpm": 5, "tpm": None}) == ModelLimits(rpm=5)


# --- what clients see ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0001, "1ms"),
        (0.006, "6ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.9999, "1m0s"),
        (62, "1m2s"),
        (62.5, "1m2.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (86_400, "24h0m0s"),
    ],
)
def test_format_reset_matches_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_headers_on_an_admitted_request() -> None:
    limiter = InMemoryRateLimiter()
    decision = limiter.admit([org(ModelLimits(rpm=60, tpm=10_000))], Cost(tokens=16), T0)
    assert rate_limit_headers(decision) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-limit-tokens", b"10000"),
        (b"x-ratelimit-remaining-requests", b"10"),
        (b"x-ratelimit-remaining-tokens", b"9984"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-reset-tokens", b"96ms"),
    ]


def test_headers_without_limits_are_empty() -> None:
    decision = InMemoryRateLimiter().admit([], Cost(tokens=5), T0)
    assert decision.admitted
    assert rate_limit_headers(decision) == []


def rejected(limits: ModelLimits, cost: Cost, fill: Cost, scope: str = "org") -> Decision:
    limiter = InMemoryRateLimiter()
    scopes = [LimitScope(scope_id(scope, f"{scope}-9", "gpt-4o-mini"), limits)]
    while limiter.admit(scopes, fill, T0).admitted:
        pass
    return limiter.admit(scopes, cost, T0 + 0.25)  # exact in floats near T0


def test_rejection_headers_and_messages() -> None:
    tpm = rejected(ModelLimits(tpm=10_000), Cost(tokens=800), Cost(tokens=500))
    headers = dict(rate_limit_headers(tpm))
    assert headers[b"retry-after"] == b"5"
    assert headers[b"retry-after-ms"] == b"4550"
    assert rejection_message("gpt-4o-mini", "org-abc", tpm) == (
        "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min (TPM): "
        "Limit 10000, Used 9959, Requested 800. Please try again in 4.55s."
    )
    rpm = rejected(ModelLimits(rpm=60), Cost(), Cost(), scope="project")
    assert rejection_message("gpt-4o-mini", "org-abc", rpm) == (
        "Rate limit reached for gpt-4o-mini in project project-9 of organization org-abc on "
        "requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 750ms."
    )
    rpd = rejected(ModelLimits(rpd=200), Cost(), Cost(), scope="key")
    assert rejection_message("gpt-4o-mini", "org-abc", rpd).startswith(
        "Rate limit reached for gpt-4o-mini in API key key-9 of organization org-abc on "
        "requests per day (RPD): Limit 200, Used 200, Requested 1. Please try again in 7m11.75s."
    )
    big = InMemoryRateLimiter().admit([org(ModelLimits(tpm=30_000))], Cost(tokens=36_858), T0)
    assert rejection_message("gpt-4o", "org-abc", big) == (
        "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): "
        "Limit 30000, Requested 36858. The input or output tokens must be reduced in order to "
        "run successfully."
    )


def test_changing_some_limits_keeps_the_others() -> None:
    current = ModelLimits(rpm=2, rpd=1000)
    assert with_changes(current, {"tpm": 50}) == ModelLimits(rpm=2, tpm=50, rpd=1000)
    assert with_changes(current, {"rpm": None}) == ModelLimits(rpd=1000)
    assert with_changes(current, {"rpm": None, "rpd": None}) is None
    assert with_changes(None, {"rpm": 5}) == ModelLimits(rpm=5)
    with pytest.raises(ValueError, match="max_requests_per_1_minute must be at most 2,147,483,647"):
        with_changes(current, {"rpm": 2**31})  # what the columns hold
    with pytest.raises(ValueError, match="up to 1,000,000,000,000,000"):
        with_changes(current, {"tpm": 10**15 + 1})
    assert with_changes(current, {"tpm": 10**12}) == ModelLimits(rpm=2, tpm=10**12, rpd=1000)
