"""The retry policy of the email outbox: exponential, capped, jittered downwards only."""

from __future__ import annotations

import random

import pytest

from keyplane.notify.dispatcher import BASE_DELAY_S, MAX_DELAY_S, retry_delay


def test_the_first_retry_comes_within_seconds() -> None:
    assert retry_delay(1, rand=lambda: 0.0) == BASE_DELAY_S / 2
    assert retry_delay(1, rand=lambda: 0.999999) == pytest.approx(BASE_DELAY_S, rel=1e-5)


def test_each_failure_doubles_the_wait() -> None:
    waits = [retry_delay(n, rand=lambda: 0.0) for n in range(1, 8)]
    assert waits == [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]


@pytest.mark.parametrize("attempts", [9, 10, 50, 10_000])
def test_the_wait_is_capped_at_fifteen_minutes(attempts: int) -> None:
    assert retry_delay(attempts, rand=lambda: 0.999999) <= MAX_DELAY_S == 900.0
    assert retry_delay(attempts, rand=lambda: 0.0) == MAX_DELAY_S / 2


def test_jitter_spreads_messages_that_failed_together() -> None:
    rng = random.Random(7)
    waits = {retry_delay(4, rand=rng.random) for _ in range(50)}
    assert len(waits) == 50
    assert all(20.0 <= w < 40.0 for w in waits)


def test_zero_or_negative_attempts_are_treated_as_the_first() -> None:
    assert retry_delay(0, rand=lambda: 0.0) == retry_delay(1, rand=lambda: 0.0)
    assert retry_delay(-3, rand=lambda: 0.0) == retry_delay(1, rand=lambda: 0.0)
