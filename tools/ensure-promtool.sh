#!/usr/bin/env bash
# The alerting rules' unit tests run Prometheus's promtool (`promtool test rules`), from
# Debian's `prometheus` package. Installs it when missing (no daemon is started or needed);
# fails loudly when it cannot.
set -euo pipefail
PROMTOOL=/usr/bin/promtool
if [ -x "$PROMTOOL" ]; then exit 0; fi
echo "== installing promtool for the alerting rules' tests (apt-get install prometheus)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null
}
[ -x "$PROMTOOL" ] || { echo "FAIL: $PROMTOOL is still missing; the alerting rules' tests need it" >&2; exit 1; }
