"""Settings: the only module that reads the environment.

Sources, highest first: keyword arguments (the CLI's flags), ``KEYPLANE_*`` environment variables,
a TOML file (``KEYPLANE_CONFIG``, else ``<data dir>/keyplane.toml`` if present), defaults.
Secrets the operator did not set (the key pepper, the encryption key) are generated into the data
directory on first start in development and refused in production.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from keyplane.billing.amounts import parse_amount
from keyplane.keys import network

PLACEHOLDERS = {"", "changeme", "change-me", "secret", "placeholder", "xxx"}


class UpstreamSettings(BaseModel):
    """An OpenAI-compatible server keyplane forwards to."""

    name: str = ""
    base_url: str
    api_key: SecretStr | None = None
    models: list[str] = Field(default_factory=lambda: ["*"])  # "*": whatever the upstream lists

    @field_validator("base_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("an upstream base_url starts with http:// or https://")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (raises ValueError when out of range)
        except ValueError:
            raise ValueError(f"'{v}' is not a valid URL (its port?)") from None
        if not parts.hostname:
            raise ValueError(f"'{v}' names no host")
        return v


def _config_file() -> Path | None:
    explicit = os.environ.get("KEYPLANE_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path(os.environ.get("KEYPLANE_DATA_DIR", ".keyplane")) / "keyplane.toml"
    return default if default.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYPLANE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,  # errors must never echo a configured secret
    )

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".keyplane")
    database_url: str = ""  # default: SQLite file in the data directory
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    pepper: SecretStr | None = None
    # Earlier peppers, while a rotation is under way: keys hashed with one still authenticate, and
    # are hashed again with the current pepper when next used (keys/format.py, `keyplane secrets
    # status` counts the keys still on each).
    pepper_previous: list[SecretStr] = Field(default_factory=list)
    encryption_key: SecretStr | None = None
    # Earlier encryption keys, while a rotation is under way: they open what they sealed, the
    # current key seals, and `keyplane reseal` seals everything again with it (sealing.py).
    encryption_key_previous: list[SecretStr] = Field(default_factory=list)
    price_files: list[Path] = Field(default_factory=list)

    trusted_proxies: list[str] = Field(
        default_factory=list
    )  # CIDRs whose X-Forwarded-For is trusted
    # Who may read /metrics (Prometheus): CIDRs, matched against the caller's address as the IP
    # allowlists see it (through trusted_proxies); an empty list turns /metrics off.
    metrics_allowed_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    # Webhook deliveries to addresses on this machine or private networks (refused by default).
    webhook_allow_private_addresses: bool = False
    webhook_dispatch_interval_s: float = Field(default=2.0, gt=0)
    anomaly_check_interval_s: float = Field(default=60.0, gt=0)  # keys' new networks, spikes
    # Secret scanning reports (POST /v1/secret_scanning/reports, GitHub's partner program): the
    # signers' ECDSA P-256 public keys, listed at this URL and/or given here (identifier → PEM).
    # Both empty: reports are not taken.
    leak_report_keys_url: str = "https://api.github.com/meta/public_keys/secret_scanning"
    leak_report_keys: dict[str, str] = Field(default_factory=dict)
    require_org_verification: bool = False  # keys only after an operator verified the organization
    key_rotation_days: int = Field(default=90, ge=1)  # keys older than this are flagged
    key_rotation_check_interval_s: float = Field(default=3600.0, gt=0)  # and the Owners emailed
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # The largest upstream answer read whole (not a stream: those are relayed as they come); a
    # larger one is refused (502), so a broken or hostile upstream cannot make the gateway buffer
    # gigabytes. Real answers run large: 2,048 embeddings of 3,072 floats are ~130 MB of JSON.
    max_answer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    upstream_retries: int = Field(default=2, ge=0, le=10)
    upstream_max_connections: int = Field(default=512, ge=1)
    # How long a request waits for one of them to come free before a 503 (Retry-After: 1).
    upstream_pool_wait_s: float = Field(default=60.0, gt=0)
    key_poll_interval_s: float = Field(default=0.25, gt=0, le=1.0)
    # Keys cached per gateway (~590 B each, ~750 B once used); the oldest eighth goes when full.
    key_cache_size: int = Field(default=1_000_000, ge=8)
    last_used_flush_s: float = Field(default=5.0, gt=0)
    usage_flush_interval_s: float = Field(default=0.2, gt=0)
    usage_batch_size: int = Field(default=500, ge=1)
    # Settlements kept in memory while the database is unreachable; beyond, requests get 503.
    max_unstored_settlements: int = Field(default=100_000, ge=1)
    # Email (verification, invitations, limit notifications), sent through the outbox.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "keyplane <keyplane@localhost>"
    # The address people open keyplane at, for links inside emails; default: http://host:port
    public_url: str = ""
    email_dispatch_interval_s: float = Field(default=2.0, gt=0)
    # Dashboard sign-in throttle (accounts/throttle.py): failed sign-ins (wrong passwords, wrong
    # two-factor codes) within the window per account (the email typed, existing or not) and per
    # client address; past either, new sign-ins get 429 until the oldest leaves the window.
    login_max_failures_per_account: int = Field(default=10, ge=1)
    login_max_failures_per_address: int = Field(default=100, ge=1)
    login_failure_window_s: int = Field(default=900, ge=1)
    password_reset_max_per_address: int = Field(default=20, ge=1)  # requests in that window
    # Sign-ups and "send a new link" requests from one client address within their own window
    # (each emails an address nobody proved theirs); past it, 429.
    signup_max_per_address: int = Field(default=20, ge=1)
    signup_window_s: int = Field(default=3600, ge=1)

    # Money (BRIEF C5/C6). Amounts are decimal dollar strings, read as exact micro-dollars.
    tier_files: list[Path] = Field(
        default_factory=list
    )  # extra usage-tier TOML (limits/tiers.toml)
    initial_tier: str = "tier-1"  # the tier `keyplane init` gives the operator's organization
    rpm_burst_s: float = Field(default=10.0, ge=0)  # RPM burst: this many seconds' worth
    # Credit purchases (BRIEF C5): the payment provider ("sandbox": the public test cards only,
    # nothing leaves the process; "stripe": real cards, through Stripe with the keys below) and a
    # purchase's bounds in dollars; declined auto-recharges are tried this many times (an hour
    # apart) before auto-recharge is turned off.
    payment_provider: Literal["sandbox", "stripe"] = "sandbox"
    stripe_secret_key: SecretStr | None = None  # sk_… (or a restricted rk_…)
    stripe_publishable_key: str = ""  # pk_…: the dashboard's card form (Stripe.js) uses it
    # whsec_…: checks the events Stripe posts to /stripe/webhook (none: they are refused).
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"  # (tests; a stand-in such as stripe-mock)
    credit_purchase_min: str = "5"
    credit_purchase_max: str = "100"
    recharge_max_attempts: int = Field(default=3, ge=1, le=10)
    recharge_check_interval_s: float = Field(default=5.0, gt=0)
    tier_check_interval_s: float = Field(default=3600.0, gt=0)  # periodic tier promotion check
    # How long keyplane keeps whose each response the upstream stores (OpenAI keeps one 30 days):
    # older, it is "not found", and the hourly check forgets it.
    stored_response_days: int = Field(default=30, ge=1)
    hold_ttl_s: int = Field(default=900, ge=1)  # an orphaned hold is settled after this long
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # A gateway silent this long (it says it is alive at each sweep) counts as stopped: the holds
    # it stored open are settled by the next sweep instead of at their expiry.
    gateway_timeout_s: int = Field(default=30, ge=1)
    min_output_tokens: int = Field(default=16, ge=1)  # a clamp below this refuses the request
    default_max_output_tokens: int = Field(default=4096, ge=1)  # models with no known output cap

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("trusted_proxies", "metrics_allowed_ips")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        network.parse_networks(value)  # (raises ValueError naming a bad one)
        return value

    @model_validator(mode="after")
    def _purchase_bounds(self) -> Settings:
        low, high = self.purchase_bounds()
        if not 0 < low <= high:
            raise ValueError("credit_purchase_min must be above 0 and at most credit_purchase_max")
        return self

    def purchase_bounds(self) -> tuple[int, int]:
        """(credit_purchase_min, credit_purchase_max) in micro-dollars, whole cents."""
        return (
            parse_amount(self.credit_purchase_min, cents=True),
            parse_amount(self.credit_purchase_max, cents=True),
        )

    @field_validator("stripe_api_base")
    @classmethod
    def _api_base(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("stripe_api_base is an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _stripe_keys(self) -> Settings:
        """With Stripe, both keys, each of its kind: a secret key swapped for the publishable
        one would be put into every card form's page. (The messages never quote a key.)"""
        if self.payment_provider != "stripe":
            return self
        secret = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        if not secret.strip():
            raise ValueError(
                "KEYPLANE_PAYMENT_PROVIDER=stripe needs KEYPLANE_STRIPE_SECRET_KEY (sk_… or rk_…, "
                "from the Stripe Dashboard's API keys)"
            )
        if not secret.startswith(("sk_", "rk_")):
            raise ValueError(
                "KEYPLANE_STRIPE_SECRET_KEY is a secret key: it starts with sk_ or rk_"
            )
        if not self.stripe_publishable_key.startswith("pk_"):
            raise ValueError(
                "KEYPLANE_PAYMENT_PROVIDER=stripe needs KEYPLANE_STRIPE_PUBLISHABLE_KEY (pk_…), "
                "for the dashboard's card form"
            )
        return self

    @field_validator("leak_report_keys")
    @classmethod
    def _pem_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pem in value.items():
            try:
                serialization.load_pem_public_key(pem.encode())
            except ValueError:
                raise ValueError(f"the public key {name!r} is not a PEM public key") from None
        return value

    @model_validator(mode="after")
    def _public_url(self) -> Settings:
        if not self.public_url:
            host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
            host = f"[{host}]" if ":" in host else host
            self.public_url = f"http://{host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.env == "production":
            for name in ("pepper", "encryption_key"):
                value: SecretStr | None = getattr(self, name)
                if value is None or value.get_secret_value().strip().lower() in PLACEHOLDERS:
                    raise ValueError(
                        f"KEYPLANE_{name.upper()} must be set to a real secret in production"
                    )
                if len(value.get_secret_value()) < 32:
                    raise ValueError(f"KEYPLANE_{name.upper()} needs at least 32 characters")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'keyplane.db'}"

    def peppers(self) -> list[bytes]:
        """The pepper (hashes new keys), then the previous ones (still check the keys they
        hashed)."""
        previous = [pepper.get_secret_value().encode() for pepper in self.pepper_previous]
        return [self.secret_bytes("pepper"), *previous]

    def encryption_keys(self) -> list[bytes]:
        """The encryption key (sealing), then the previous ones (opening only)."""
        previous = [key.get_secret_value().encode() for key in self.encryption_key_previous]
        return [self.secret_bytes("encryption_key"), *previous]

    def secret_bytes(self, name: Literal["pepper", "encryption_key"]) -> bytes:
        """Returns the configured secret, or one generated once into the data directory (dev)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value().encode()
        path = self.data_dir / f"{name}.secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Write a complete file under a temporary name, then link it into place: a reader
            # never sees a half-written secret, and of two first starts racing, one wins.
            tmp = path.with_name(f".{name}.{secrets.token_hex(8)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        stored = path.read_text().strip()
        if len(stored) < 32:
            raise ValueError(f"{path} does not hold a usable secret (at least 32 characters)")
        return stored.encode()


def load_settings(**overrides: Any) -> Settings:
    """Builds Settings from the environment, the TOML file and explicit overrides."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
