#!/usr/bin/env bash
# Installs what the tests need and runs every test (the unit tests in tests/
# and the crash-recovery fuzz suite in fuzz/, in its bounded CI profile).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# the README's install (editable, compat mode: see there), with the test extra
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
# the stock zstd decoder: Tier 1 files must stay readable by it (tests/test_tier1.py)
if ! command -v zstd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd >/dev/null
fi
# promtool (Debian's prometheus package): the alert rules are checked and
# unit-tested with it (tests/test_alerts.py)
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
exec python3 -m pytest "$@"
