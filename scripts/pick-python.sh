#!/usr/bin/env bash
# Prints the Python that `make` builds .venv from: the distribution's own CPython 3.11+ when there
# is one (/usr/bin/python3.11, /usr/bin/python3), else `python3` on PATH.
#
# Why the distribution's first: Debian's (and Ubuntu's, Fedora's) CPython is built with profile
# guided optimization and link-time optimization, the interpreter linked into the executable.
# A plain source build, like pyenv's default (`--enable-shared`, no `--enable-optimizations`),
# calls every interpreter function through the shared library's indirection: keyplane needs 11 %
# more instructions per request on it and 1.1-1.15x the CPU time (bench/RESULTS.md, 2026-12-04).
# A machine whose PATH puts such a build first (pyenv's shims, say) still gets the faster one.
# `make PYTHON=…` chooses another.
set -euo pipefail
for candidate in /usr/bin/python3.11 /usr/bin/python3; do
  if [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "$candidate"
    exit 0
  fi
done
echo python3
