#!/usr/bin/env bash
# The test suite's two passes (Makefile, `make test`), one after the other, each spread over every
# core by pytest-xdist (tests share nothing: each makes its own directories, ports and PostgreSQL
# databases):
#   1. the whole suite on src/ as written;
#   2. on the compiled copy (scripts/compile.py), when there is one, the tests that drive the
#      compiled modules: the request path (gateway, keys, limits, pricing, the settlement writer),
#      where mypyc's checks of annotated types at run time and its compiled classes can behave
#      differently. Left out of it (ONCE_ONLY): the dashboard's, the Admin API's, the CLI's,
#      emails', payments' and migrations' tests, whose code is not compiled; they reach compiled
#      code only through calls the request path's tests make too, and mypy --strict checks the
#      types they pass.
# The exit status is the first failing pass's.
#   scripts/test-passes.sh PYTHON COMPILED_SRC [pytest arguments…]
set -uo pipefail
python=$1 compiled=$2
shift 2

workers=()
if [ "$(nproc)" -ge 2 ]; then
  workers=(-n "$(nproc)" --dist worksteal)
fi

ONCE_ONLY=(
  --ignore=tests/e2e
  --ignore-glob='*/test_dashboard_*.py' --ignore-glob='*/test_admin_*.py'
  --ignore-glob='*/test_cli*.py' --ignore-glob='*/test_stripe_*.py'
  --ignore=tests/integration/test_accounts_web.py --ignore=tests/integration/test_email_html.py
  --ignore=tests/integration/test_fuzz_dashboard.py --ignore=tests/integration/test_authz_matrix.py
  --ignore=tests/integration/test_schemathesis.py --ignore=tests/integration/test_migrations.py
  --ignore=tests/integration/test_payments.py --ignore=tests/integration/test_receipts.py
  --ignore=tests/integration/test_outbox.py --ignore=tests/integration/test_webhooks.py
  --ignore=tests/integration/test_reseal.py
  --ignore=tests/integration/test_rotation_reminders.py
)

echo "--- on src/"
"$python" -m pytest "${workers[@]}" "$@"
plain=$?
if [ ! -d "$compiled" ]; then
  exit "$plain"
fi
compiled=$(cd "$compiled" && pwd)
echo "--- on the compiled copy ($compiled): the request path's tests"
PYTHONPATH="$compiled" "$python" -m pytest "${workers[@]}" "${ONCE_ONLY[@]}" "$@"
built=$?
if [ "$built" -eq 5 ]; then built=0; fi  # the arguments named only tests left out of this pass
if [ "$plain" -ne 0 ]; then exit "$plain"; fi
exit "$built"
