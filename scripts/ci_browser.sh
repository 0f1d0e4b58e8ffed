#!/usr/bin/env bash
# CI: make Debian's chromium available for tests/test_web_page.py. Playwright drives it through
# executable_path=/usr/bin/chromium; no browser is ever downloaded (no `playwright install`).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "ci_browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci_browser.sh: $CHROMIUM is missing and there is no apt-get; install the distribution's chromium" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "ci_browser.sh: installing chromium needs root or sudo" >&2
    exit 1
  fi
  SUDO=(sudo)
fi

"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
  echo "ci_browser.sh: apt-get installed chromium but $CHROMIUM is missing" >&2
  exit 1
fi
echo "ci_browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") installed"
