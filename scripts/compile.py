"""Compiles keyplane's request path to C with mypyc: a copy of src/ in build/compiled/src whose
hot modules (MODULES) are extension modules. `make run`, `make test` and the benchmark run keyplane
from there (PYTHONPATH) when it exists; the work tree's src/ stays plain Python, so editing a file
never leaves a stale compiled module in its way, and `pytest` run by hand tests the sources.

    .venv/bin/python scripts/compile.py [--src DIR] [--out DIR]

Same code, same tests, ~1.5x the requests per second on one core (bench/RESULTS.md,
2026-12-04): the compiled modules call each other directly and keep their classes' attributes in
C structs. mypyc also checks every annotated type at run time, so the whole test suite runs
against the compiled copy too (`make test`).

The compiled extensions are cached by the hash of what they are built from: the sources of the
compiled modules and of every keyplane module they import, directly or not (mypyc compiles against
those modules' types: a changed return type there, and a stale extension would raise TypeError at
run time), the versions of the installed libraries (mypy's among them) and Python's, and how they
are built: the list of modules compiled (one added to it would otherwise reuse a build without its
extension) and this script itself. A change
elsewhere in src/ only copies the tree again (~1 s); a change to one of those modules rebuilds
them (~1 minute, one C compiler process). Without a C compiler or Python's headers (Debian: gcc,
python3.11-dev) nothing is compiled: build/compiled is removed and
keyplane runs as plain Python, with a warning.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent

# The modules every proxied request runs through (docs/architecture.md, "A compiled request
# path"). Not gateway/errors.py: mypyc cannot compile an exception that is a slotted dataclass.
MODULES = [
    "keyplane/h1server.py",
    "keyplane/ids.py",
    "keyplane/values.py",
    "keyplane/clock.py",
    "keyplane/gateway/app.py",
    "keyplane/gateway/pipeline.py",
    "keyplane/gateway/canonical.py",
    "keyplane/gateway/access.py",
    "keyplane/gateway/asgi.py",
    "keyplane/gateway/h1client.py",
    "keyplane/gateway/httpx_client.py",
    "keyplane/gateway/journal.py",
    "keyplane/gateway/meter.py",
    "keyplane/gateway/money.py",
    "keyplane/gateway/ratelimits.py",
    "keyplane/gateway/streaming.py",
    "keyplane/gateway/transport.py",
    "keyplane/gateway/upstreams.py",
    "keyplane/billing/bounds.py",
    "keyplane/billing/periods.py",
    "keyplane/billing/wallet.py",
    "keyplane/keys/access.py",
    "keyplane/keys/authenticator.py",
    "keyplane/keys/format.py",
    "keyplane/keys/models.py",
    "keyplane/keys/network.py",
    "keyplane/keys/permissions.py",
    "keyplane/limits/headers.py",
    "keyplane/limits/ratelimit.py",
    "keyplane/storage/settlement_writer.py",
    "keyplane/usage/pricing.py",
    "keyplane/usage/records.py",
    "keyplane/usage/tokens.py",
]
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def built_from(src: Path) -> list[str]:
    """MODULES and every module of ``src`` they import, directly or not (absolute imports of
    ``keyplane``, as src/ spells them all), as paths relative to ``src``, sorted."""
    seen: set[str] = set()
    todo = list(MODULES)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse((src / module).read_bytes(), module)):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] != "keyplane":
                    continue
                base = name.replace(".", "/")
                for candidate in (f"{base}.py", f"{base}/__init__.py"):
                    if (src / candidate).is_file():
                        todo.append(candidate)
    return sorted(seen)


def installed() -> list[str]:
    """Every distribution in this environment as name==version, sorted: mypyc compiles against
    the libraries' types too (a changed return type there, and a stale extension would raise
    TypeError at run time), and mypy's own version decides what it emits."""
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())


def digest(src: Path) -> str:
    """The cache key of a build of ``src``: everything the extensions are built from and how."""
    h = hashlib.sha256()
    h.update(f"{sys.version} {EXTENSION}\n".encode())
    h.update("\n".join(installed()).encode() + b"\0")
    # What is compiled (a module imported by those compiled is hashed below either way, compiled
    # or not) and how: this script, its mypyc invocation among it.
    h.update("\n".join(MODULES).encode() + b"\0")
    h.update(SCRIPT.read_bytes() + b"\0")
    for module in built_from(src):
        h.update(module.encode() + b"\0" + (src / module).read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _copy_tree(src: Path, into: Path) -> None:
    shutil.rmtree(into, ignore_errors=True)
    ignored = shutil.ignore_patterns("__pycache__", "*.so", "build", "*.egg-info")
    shutil.copytree(src, into, ignore=ignored)


def _mypyc(tree: Path) -> str | None:
    """Compiles MODULES inside ``tree`` (extensions written next to the sources); returns None, or
    why it failed."""
    if shutil.which(os.environ.get("CC", "gcc")) is None and shutil.which("cc") is None:
        return "no C compiler (install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"no Python headers ({include}; Debian: python3.11-dev)"
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *MODULES], cwd=tree, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return "mypyc failed:\n" + (done.stdout + done.stderr)[-3000:]
    shutil.rmtree(tree / "build", ignore_errors=True)
    return None


def compile_tree(src: Path, out: Path) -> bool:
    """Writes ``out/src``: ``src`` with MODULES compiled; returns False (and removes ``out/src``)
    when they could not be."""
    cache = out / "cache" / digest(src)
    staging = out / "src.new"
    _copy_tree(src, staging)
    if cache.is_dir():
        for built in cache.rglob(f"*{EXTENSION}"):
            shutil.copy2(built, staging / built.relative_to(cache))
    else:
        print("keyplane: compiling the request path with mypyc (about a minute, once)", flush=True)
        failure = _mypyc(staging)
        if failure is not None:
            print(f"keyplane: not compiled, running as plain Python: {failure}", file=sys.stderr)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(out / "src", ignore_errors=True)
            return False
        shutil.rmtree(out / "cache", ignore_errors=True)  # (one build kept: the current one)
        for built in staging.rglob(f"*{EXTENSION}"):
            target = cache / built.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)
    shutil.rmtree(out / "src", ignore_errors=True)
    staging.rename(out / "src")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "compiled")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if compile_tree(args.src.resolve(), args.out.resolve()) or os.environ.get("CI") != "true":
        return 0
    # In CI a request path that no longer compiles is a failure, not a fallback: the fallback
    # would test (and benchmark) plain Python only, and `make run` would serve uncompiled.
    print("keyplane: CI=true: the compiled copy must build", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
