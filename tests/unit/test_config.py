"""Settings: defaults, KEYPLANE_* variables, the TOML file, and the secrets production demands."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from keyplane.config import Settings, UpstreamSettings, load_settings

STRONG = "S3cr3t-" + "k" * 40
STRONG2 = "En-" + "q" * 45


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("KEYPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_use_sqlite_under_the_data_dir() -> None:
    s = Settings()
    assert s.env == "development"
    assert s.data_dir == Path(".keyplane")
    assert s.resolved_database_url == "sqlite:///.keyplane/keyplane.db"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.upstreams == []
    assert s.pepper is None
    assert s.key_poll_interval_s == 0.25
    assert s.max_answer_bytes == 256 * 1024 * 1024


def test_env_vars_are_read_and_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KEYPLANE_PORT", "9000")
    monkeypatch.setenv("KEYPLANE_ACCESS_LOG", "true")
    monkeypatch.setenv("KEYPLANE_PRICE_FILES", '["extra.toml"]')
    monkeypatch.setenv("KEYPLANE_MAX_ANSWER_BYTES", "1048576")
    s = Settings()
    assert s.max_answer_bytes == 1048576
    assert s.port == 9000
    assert s.access_log is True
    assert s.price_files == [Path("extra.toml")]
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'state' / 'keyplane.db'}"


@pytest.mark.parametrize(
    ("options", "url"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"port": 18802}, "http://127.0.0.1:18802"),  # links in emails follow --port
        ({"host": "0.0.0.0", "port": 80}, "http://127.0.0.1:80"),
        ({"host": "::1"}, "http://[::1]:8080"),
        ({"public_url": "https://keys.example.com/", "port": 9}, "https://keys.example.com"),
    ],
)
def test_the_public_url_of_email_links(options: dict[str, object], url: str) -> None:
    assert Settings(**options).public_url == url  # type: ignore[arg-type]


def test_explicit_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://kp@127.0.0.1:5432/kp"
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", url)
    assert Settings().resolved_database_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "70000"), ("KEY_POLL_INTERVAL_S", "5"), ("MAX_ANSWER_BYTES", "1048575")],
)
def test_out_of_range_env_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"KEYPLANE_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_upstreams_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KEYPLANE_UPSTREAMS",
        '[{"name": "openai", "base_url": "https://api.openai.com/v1/", "api_key": "sk-up-123"},'
        ' {"name": "local", "base_url": "http://127.0.0.1:8000/v1", "models": ["llama"]}]',
    )
    s = Settings()
    first, second = s.upstreams
    assert (first.name, first.base_url, first.models) == (
        "openai",
        "https://api.openai.com/v1",
        ["*"],
    )
    assert first.api_key is not None
    assert first.api_key.get_secret_value() == "sk-up-123"
    assert "sk-up-123" not in repr(s)
    assert (second.base_url, second.models, second.api_key) == (
        "http://127.0.0.1:8000/v1",
        ["llama"],
        None,
    )


@pytest.mark.parametrize("url", ["api.openai.com/v1", "ftp://example.com", "", "localhost:8000"])
def test_bad_upstream_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        UpstreamSettings(base_url=url)


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://127.0.0.1:99999/v1", "not a valid URL"), ("http://:8080/v1", "names no host")],
)
def test_an_upstream_url_with_a_bad_port_or_no_host_is_refused(url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        UpstreamSettings(base_url=url)


def test_bad_upstream_in_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYPLANE_UPSTREAMS", '[{"base_url": "localhost:8000"}]')
    with pytest.raises(ValidationError, match="http:// or https://"):
        Settings()


def write_toml(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'port = 9100\nhost = "0.0.0.0"\n\n'
        '[[upstreams]]\nname = "vllm"\nbase_url = "http://10.0.0.5:8000/v1/"\n'
    )
    return path


def test_toml_file_from_keyplane_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYPLANE_CONFIG", str(write_toml(tmp_path / "etc" / "kp.toml")))
    s = Settings()
    assert (s.host, s.port) == ("0.0.0.0", 9100)
    assert [u.base_url for u in s.upstreams] == ["http://10.0.0.5:8000/v1"]


def test_env_beats_toml_and_keyword_overrides_beat_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEYPLANE_CONFIG", str(write_toml(tmp_path / "kp.toml")))
    monkeypatch.setenv("KEYPLANE_PORT", "9200")
    assert Settings().port == 9200
    assert load_settings(port=9300).port == 9300
    assert load_settings(port=None).port == 9200  # an unset CLI flag changes nothing


def test_toml_in_the_data_dir_is_read_when_present(tmp_path: Path) -> None:
    assert Settings().port == 8080
    write_toml(tmp_path / ".keyplane" / "keyplane.toml")
    assert Settings().port == 9100


def test_unknown_toml_setting_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "kp.toml"
    path.write_text("prot = 9100\n")
    monkeypatch.setenv("KEYPLANE_CONFIG", str(path))
    with pytest.raises(ValidationError, match="prot"):
        Settings()


@pytest.mark.parametrize(
    ("pepper", "key", "complaint"),
    [
        (None, STRONG2, "KEYPLANE_PEPPER must be set"),
        ("changeme", STRONG2, "KEYPLANE_PEPPER must be set"),
        ("  CHANGEME ", STRONG2, "KEYPLANE_PEPPER must be set"),
        ("", STRONG2, "KEYPLANE_PEPPER must be set"),
        ("p" * 31, STRONG2, "KEYPLANE_PEPPER needs at least 32"),
        (STRONG, None, "KEYPLANE_ENCRYPTION_KEY must be set"),
        (STRONG, "secret", "KEYPLANE_ENCRYPTION_KEY must be set"),
        (STRONG, "e" * 16, "KEYPLANE_ENCRYPTION_KEY needs at least 32"),
    ],
)
def test_production_refuses_missing_placeholder_or_short_secrets(
    monkeypatch: pytest.MonkeyPatch, pepper: str | None, key: str | None, complaint: str
) -> None:
    monkeypatch.setenv("KEYPLANE_ENV", "production")
    for name, value in (("KEYPLANE_PEPPER", pepper), ("KEYPLANE_ENCRYPTION_KEY", key)):
        if value is not None:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=complaint):
        Settings()


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYPLANE_ENV", "production")
    monkeypatch.setenv("KEYPLANE_PEPPER", STRONG)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", STRONG2)
    s = Settings()
    assert s.secret_bytes("pepper") == STRONG.encode()
    assert not (s.data_dir / "pepper.secret").exists()
    assert STRONG not in repr(s)


def test_production_refusal_does_not_echo_the_other_secret() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="production", pepper="too-short", encryption_key=STRONG2)
    assert STRONG2[-12:] not in str(info.value)


def test_development_generates_the_pepper_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    s = Settings(data_dir=data_dir)
    pepper = s.secret_bytes("pepper")
    path = data_dir / "pepper.secret"

    assert len(pepper) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert s.secret_bytes("pepper") == pepper
    assert Settings(data_dir=data_dir).secret_bytes("pepper") == pepper  # next start reuses it
    assert s.secret_bytes("encryption_key") != pepper
    assert stat.S_IMODE((data_dir / "encryption_key.secret").stat().st_mode) == 0o600


def test_development_generates_different_peppers_per_data_dir(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path / "a").secret_bytes("pepper")
    b = Settings(data_dir=tmp_path / "b").secret_bytes("pepper")
    assert a != b


def test_configured_pepper_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d", pepper=STRONG)
    assert s.secret_bytes("pepper") == STRONG.encode()
    assert not (tmp_path / "d").exists()


def test_an_empty_pepper_file_is_never_used_as_the_pepper(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "pepper.secret").write_text("")
    try:
        pepper = Settings(data_dir=tmp_path / "d").secret_bytes("pepper")
    except (ValueError, OSError):
        return  # refusing to start is an acceptable answer
    assert pepper != b""


@pytest.mark.parametrize("name", ["KEYPLANE_METRICS_ALLOWED_IPS", "KEYPLANE_TRUSTED_PROXIES"])
def test_a_bad_address_range_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, '["10.0.0.0/8", "10.0.0.300/32"]')
    with pytest.raises(ValidationError, match=r"'10\.0\.0\.300/32' is not an IP address"):
        Settings()


def test_metrics_are_for_this_machine_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().metrics_allowed_ips == ["127.0.0.1/32", "::1/128"]
    monkeypatch.setenv("KEYPLANE_METRICS_ALLOWED_IPS", "[]")
    assert Settings().metrics_allowed_ips == []


def test_a_leak_report_key_that_is_no_public_key_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYPLANE_LEAK_REPORT_KEYS", '{"github-1": "not a PEM"}')
    with pytest.raises(ValidationError, match="'github-1' is not a PEM public key"):
        Settings()


SK = "sk_test_" + "s" * 40
PK = "pk_test_" + "p" * 40


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({}, "needs KEYPLANE_STRIPE_SECRET_KEY"),
        ({"stripe_secret_key": "  ", "stripe_publishable_key": PK}, "needs KEYPLANE_STRIPE_SECRET"),
        ({"stripe_secret_key": PK, "stripe_publishable_key": PK}, "starts with sk_ or rk_"),
        ({"stripe_secret_key": SK}, "needs KEYPLANE_STRIPE_PUBLISHABLE_KEY"),
        # A secret key where the publishable one goes would be put into the card form's page.
        ({"stripe_secret_key": SK, "stripe_publishable_key": SK}, "PUBLISHABLE_KEY \\(pk_"),
    ],
)
def test_stripe_needs_both_its_keys_each_of_its_kind_and_never_echoes_them(
    monkeypatch: pytest.MonkeyPatch, keys: dict[str, str], why: str
) -> None:
    monkeypatch.setenv("KEYPLANE_PAYMENT_PROVIDER", "stripe")
    with pytest.raises(ValidationError, match=why) as refused:
        Settings(**keys)  # type: ignore[arg-type]
    assert "s" * 40 not in str(refused.value) and "p" * 40 not in str(refused.value)


def test_stripe_with_its_keys_and_the_sandbox_without_any(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().payment_provider == "sandbox"
    monkeypatch.setenv("KEYPLANE_PAYMENT_PROVIDER", "stripe")
    monkeypatch.setenv("KEYPLANE_STRIPE_SECRET_KEY", SK)
    monkeypatch.setenv("KEYPLANE_STRIPE_PUBLISHABLE_KEY", PK)
    monkeypatch.setenv("KEYPLANE_STRIPE_API_BASE", "http://127.0.0.1:12111/")
    s = Settings()
    assert s.stripe_secret_key is not None and s.stripe_secret_key.get_secret_value() == SK
    assert SK not in repr(s) and s.stripe_api_base == "http://127.0.0.1:12111"
    assert s.stripe_webhook_secret is None
    with pytest.raises(ValidationError, match="http:// or https://"):
        Settings(stripe_api_base="api.stripe.com")
