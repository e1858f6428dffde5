#!/usr/bin/env bash
# The test suite's two passes (Makefile, `make test`): on src/ as written, and on the compiled copy
# when there is one. They share nothing (each test makes its own directories, ports and
# PostgreSQL databases), so on a machine with two cores or more they run side by side, each on
# its own core: the suite's wall time is one pass's instead of two. The compiled pass writes to a
# log file, printed when both are done; the exit status is the first failure's.
#   scripts/test-passes.sh PYTHON COMPILED_SRC [pytest arguments…]
set -uo pipefail
python=$1 compiled=$2
shift 2

if [ ! -d "$compiled" ]; then
  exec "$python" -m pytest "$@"
fi
compiled=$(cd "$compiled" && pwd)

if [ "$(nproc)" -lt 2 ]; then
  "$python" -m pytest "$@" || exit
  echo "--- again, on the compiled copy ($compiled)"
  PYTHONPATH="$compiled" exec "$python" -m pytest "$@"
fi

log=$(mktemp "${TMPDIR:-/tmp}/keyplane-compiled-pass.XXXXXX")
trap 'rm -f "$log"' EXIT
echo "--- the compiled copy ($compiled) is tested at the same time; its output follows this pass's"
PYTHONPATH="$compiled" "$python" -m pytest "$@" >"$log" 2>&1 &
compiled_pid=$!
trap 'kill "$compiled_pid" 2>/dev/null; rm -f "$log"' EXIT INT TERM
"$python" -m pytest "$@"
plain=$?
wait "$compiled_pid"
built=$?
echo "--- on the compiled copy ($compiled)"
cat "$log"
if [ "$plain" -ne 0 ]; then exit "$plain"; fi
exit "$built"
