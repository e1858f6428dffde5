"""The account services a login needs, bundled for the dashboard (built by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.accounts.sessions import LoginService
from keyplane.accounts.signup import SignupService
from keyplane.accounts.totp import SecondFactorService


@dataclass(frozen=True, slots=True)
class AuthServices:
    signup: SignupService
    login: LoginService
    second_factor: SecondFactorService
