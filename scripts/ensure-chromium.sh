#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (Playwright cannot download its own
# browser here). Installs it from apt when missing and we are root; otherwise says how.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Chromium for the browser tests (apt-get install chromium)…"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "Chromium is missing: install it (apt-get install chromium) to run the browser tests." >&2
fi
