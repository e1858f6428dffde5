"""The pure rules of signing in: passwords, addresses, tokens, TOTP codes, recovery codes and the
login throttle's arithmetic."""

from __future__ import annotations

import hashlib

import pyotp
import pytest
from cryptography.fernet import Fernet

from keyplane.accounts.signup import (
    check_password,
    common_passwords,
    hash_token,
    new_token,
    normalize_email,
)
from keyplane.accounts.throttle import (
    LoginThrottled,
    ThrottlePolicy,
    account_subject,
    address_subject,
    describe_wait,
    reset_subject,
    retry_after,
    signup_subject,
)
from keyplane.accounts.totp import (
    STEP_S,
    hash_recovery_code,
    looks_like_recovery_code,
    matching_step,
    new_recovery_codes,
    new_totp_secret,
    provisioning_uri,
)
from keyplane.errors import InvalidRequest
from keyplane.sealing import derive_key

NOW = 1_800_000_000.0


# -- passwords --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short-pass1", "at least 12"),
        ("x" * 257, "at most 256"),
        ("password1234", "too common"),
        ("PassWord1234", "too common"),  # case does not make a common password safe
        ("qwertyuiopasdf", "too common"),
        ("abababababababab", "too common"),  # too few different characters
        ("ada.lovelace@example.com", "cannot be your email"),
    ],
)
def test_unacceptable_passwords_are_refused_with_a_reason(password: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as err:
        check_password(password, email="ada.lovelace@example.com")
    assert err.value.param == "password"


def test_a_passphrase_is_accepted() -> None:
    check_password("violet tractor on the moon", email="ada@example.com")
    check_password("correct horse battery")  # the test suite's password


def test_the_common_password_list_ships_with_the_package() -> None:
    words = common_passwords()
    assert len(words) > 10_000
    assert {"123456", "password", "iloveyou", "password1234", "1q2w3e4r5t6y"} <= words


# -- email addresses ------------------------------------------------------------------------------
def test_addresses_are_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Ada@Example.COM ") == "ada@example.com"


@pytest.mark.parametrize(
    "bad", ["", "ada", "@example.com", "ada@", "ada@localhost", "a da@example.com", "a\r\n@x.io"]
)
def test_things_that_are_not_addresses_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        normalize_email(bad)
    assert err.value.param == "email"


# -- tokens ---------------------------------------------------------------------------------------
def test_tokens_have_256_random_bits_and_only_their_hash_is_kept() -> None:
    raw, stored = new_token()
    assert len(raw) >= 43  # 32 bytes in URL-safe base64
    assert stored == hashlib.sha256(raw.encode()).hexdigest() == hash_token(raw)
    assert raw not in stored
    assert len({new_token()[0] for _ in range(100)}) == 100


# -- TOTP -----------------------------------------------------------------------------------------
def test_a_code_matches_its_step_and_one_step_of_drift_either_side() -> None:
    secret = new_totp_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW // STEP_S)
    assert matching_step(secret, totp.at(NOW), NOW) == step
    assert matching_step(secret, totp.at(NOW - STEP_S), NOW) == step - 1
    assert matching_step(secret, totp.at(NOW + STEP_S), NOW) == step + 1
    assert matching_step(secret, totp.at(NOW - 2 * STEP_S), NOW) is None
    assert matching_step(secret, " ".join(totp.at(NOW)), NOW) == step  # spaces are ignored


@pytest.mark.parametrize("junk", ["", "12345", "1234567", "abcdef", "12345a"])
def test_codes_that_are_not_six_digits_never_match(junk: str) -> None:
    assert matching_step(new_totp_secret(), junk, NOW) is None


def test_the_secret_has_160_bits_and_an_otpauth_uri() -> None:
    secret = new_totp_secret()
    assert len(secret) == 32
    uri = provisioning_uri(secret, "ada@example.com")
    assert uri.startswith("otpauth://totp/keyplane:ada%40example.com?")
    assert f"secret={secret}" in uri


def test_ten_distinct_recovery_codes_that_survive_retyping() -> None:
    codes = new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10
    code = codes[0]
    assert len(code.replace("-", "")) == 20  # 100 bits
    assert looks_like_recovery_code(code)
    assert hash_recovery_code(code.upper().replace("-", " ")) == hash_recovery_code(code)
    assert not looks_like_recovery_code("123456")


def test_sealing_keys_are_derived_per_purpose() -> None:
    master = b"m" * 48
    key = derive_key(master, "keyplane/totp-secret/v1")
    assert key == derive_key(master, "keyplane/totp-secret/v1")
    assert key != derive_key(master, "another purpose")
    Fernet(key)  # a valid Fernet key


# -- throttle -------------------------------------------------------------------------------------
def test_retry_after_waits_until_the_oldest_counted_failure_leaves_the_window() -> None:
    now = 10_000
    failures = tuple(range(now - 100, now))  # 100 failures in the last 100 s
    assert retry_after(failures, 100, 3600, now) == 3500
    assert retry_after(failures[:99], 100, 3600, now) == 0
    assert retry_after((now - 3599,) * 100, 100, 3600, now) == 1


def test_waits_read_naturally() -> None:
    assert describe_wait(1) == "1 second"
    assert describe_wait(59) == "59 seconds"
    assert describe_wait(60) == "1 minute"
    assert describe_wait(3600) == "60 minutes"
    assert describe_wait(3 * 3600) == "3 hours"
    message = LoginThrottled(3500, by_address=False).message
    assert message == (
        "Too many failed sign-in attempts for this account. Try again in 59 minutes."
    )


def test_an_account_is_keyed_by_the_address_typed_however_it_is_cased() -> None:
    assert account_subject(" Ada@Example.com") == account_subject("ada@example.com")
    assert account_subject("ada@example.com") != account_subject("bob@example.com")
    assert len(account_subject("x" * 300)) == 64


def test_addresses_count_per_ipv4_and_per_ipv6_slash_64() -> None:
    assert address_subject("203.0.113.5") != address_subject("203.0.113.6")
    assert address_subject("2001:db8:1:2::1") == address_subject("2001:db8:1:2:ffff::9")
    assert address_subject("2001:db8:1:2::1") != address_subject("2001:db8:1:3::1")
    assert address_subject("::ffff:203.0.113.5") == address_subject("203.0.113.5")
    assert address_subject("testclient") != address_subject("203.0.113.5")


def test_the_default_policy_is_10_failures_an_account_in_15_minutes() -> None:
    policy = ThrottlePolicy()
    assert (policy.per_account, policy.per_address, policy.window_s) == (10, 100, 900)
    with pytest.raises(ValueError, match="positive"):
        ThrottlePolicy(per_account=0)


def test_sign_ups_count_per_network_apart_from_sign_ins_and_resets() -> None:
    policy = ThrottlePolicy()
    assert (policy.signups_per_address, policy.signup_window_s) == (20, 3600)
    subjects = {signup_subject("203.0.113.5"), reset_subject("203.0.113.5")}
    assert len(subjects | {address_subject("203.0.113.5")}) == 3
    assert signup_subject("2001:db8:1:2::1") == signup_subject("2001:db8:1:2:ffff::9")
    assert {len(s) for s in subjects} == {64}
    message = LoginThrottled(3420, by_address=True, what="sign-ups").message
    assert message == "Too many sign-ups from your network. Try again in 57 minutes."
    with pytest.raises(ValueError, match="positive"):
        ThrottlePolicy(signup_window_s=0)
