#!/usr/bin/env bash
# Tests need a few programs from Debian's packages: Chromium for the browser tests (driven by
# Playwright, never `playwright install`) and, from the `prometheus` package, promtool and
# the Prometheus server for the alerting rules' tests (the tests start the server on their
# own port; the package's daemon is not started). Installs one when it is missing; fails
# loudly when it cannot.
#   tools/ensure-debian-tool.sh PROGRAM PACKAGE WHAT-NEEDS-IT [apt-get option...]
set -euo pipefail
PROGRAM=$1 PACKAGE=$2 NEEDED_BY=$3
shift 3
if [ -x "$PROGRAM" ]; then exit 0; fi
echo "== installing $PROGRAM for $NEEDED_BY (apt-get install $PACKAGE)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "$@" "$PACKAGE" >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$@" "$PACKAGE" >/dev/null
}
[ -x "$PROGRAM" ] || { echo "FAIL: $PROGRAM is still missing; $NEEDED_BY need it" >&2; exit 1; }
