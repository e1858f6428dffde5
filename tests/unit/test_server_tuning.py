"""Process tuning at start: one malloc arena on glibc, unless the operator chose otherwise."""

from __future__ import annotations

import platform

import pytest

from keyplane.server import one_malloc_arena


def test_one_arena_is_asked_for_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert one_malloc_arena() is (platform.libc_ver()[0] == "glibc")


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False
