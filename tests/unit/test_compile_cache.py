"""scripts/compile.py rebuilds the compiled request path whenever something it was compiled against
changes: its own modules, every keyplane module they import (directly or not), the installed
libraries, the list of modules it compiles and the script itself. A cache keyed on the compiled
modules alone once kept an extension built against an older return type of an imported, uncompiled
module, which then raised TypeError at run time on every settlement flush."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _compile_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kp_compile", REPO / "scripts" / "compile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def src(tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return copy


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# changed\n")


def test_what_the_compiled_modules_import_is_part_of_what_they_are_built_from(src: Path) -> None:
    script = _compile_script()
    built_from = script.built_from(src)
    assert set(script.MODULES) <= set(built_from)
    # Imported by the compiled gateway/money.py, not compiled itself.
    assert "keyplane/billing/ports.py" in built_from
    # Imported by none of them: the dashboard.
    assert not any(m.startswith("keyplane/web/") for m in built_from)


def test_a_change_to_an_imported_module_rebuilds_and_one_elsewhere_does_not(src: Path) -> None:
    script = _compile_script()
    before = script.digest(src)
    _touch(src / "keyplane" / "web" / "admin.py")
    assert script.digest(src) == before
    _touch(src / "keyplane" / "billing" / "ports.py")
    assert script.digest(src) != before


def test_another_version_of_a_library_rebuilds(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _compile_script()
    before = script.digest(src)
    now = script.installed()
    assert any(line.startswith("httptools==") for line in now)
    bumped = [f"{line}.post1" if line.startswith("httptools==") else line for line in now]
    monkeypatch.setattr(script, "installed", lambda: bumped)
    assert script.digest(src) != before


def test_a_module_added_to_those_compiled_rebuilds(
    src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gateway/media.py is imported by the compiled pipeline, so its source is hashed already:
    compiling it too must still not reuse a build without its extension."""
    script = _compile_script()
    before = script.digest(src)
    assert "keyplane/gateway/media.py" in script.built_from(src)
    assert "keyplane/gateway/media.py" not in script.MODULES
    monkeypatch.setattr(script, "MODULES", [*script.MODULES, "keyplane/gateway/media.py"])
    assert script.digest(src) != before


def test_a_change_to_the_script_itself_rebuilds(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the modules are compiled (mypyc's arguments, say) is written in the script."""
    script = _compile_script()
    before = script.digest(src)
    changed = tmp_path / "compile.py"
    changed.write_text(script.SCRIPT.read_text() + "\n# changed\n")
    monkeypatch.setattr(script, "SCRIPT", changed)
    assert script.digest(src) != before
