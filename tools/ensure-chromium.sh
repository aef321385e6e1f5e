#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
# Installs it from Debian's packages when missing; fails loudly when it cannot.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then exit 0; fi
echo "== installing Chromium for the browser tests (apt-get install chromium)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
}
[ -x "$CHROMIUM" ] || { echo "FAIL: $CHROMIUM is still missing; the browser tests need it" >&2; exit 1; }
