"""Process tuning at start: one malloc arena on glibc, unless the operator chose otherwise; the
request path compiled when run from the compiled copy."""

from __future__ import annotations

import os
import platform

import httpx
import pytest

from keyplane.server import compiled, make_server, one_malloc_arena


def test_one_arena_is_asked_for_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert one_malloc_arena() is (platform.libc_ver()[0] == "glibc")


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False


def test_idle_connections_outlive_the_clients_own_expiry() -> None:
    # A server closing idle connections exactly when httpx (the OpenAI SDK's transport) stops
    # reusing them loses the race now and then: a request sent just as the server closes fails.
    assert make_server(app=None).keep_alive_s >= 2 * httpx.Limits().keepalive_expiry


def test_the_request_path_is_compiled_exactly_when_run_from_the_compiled_copy() -> None:
    # `make test` runs the suite a second time with build/compiled/src first on PYTHONPATH: this
    # fails there if that pass quietly ran the plain sources (and here if a compiled module were
    # shadowing src/).
    from_copy = "build/compiled/src" in os.environ.get("PYTHONPATH", "")
    assert compiled() is from_copy
