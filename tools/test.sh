#!/usr/bin/env bash
# Installs what the tests need and runs every test (the unit tests in tests/
# and the crash-recovery fuzz suite in fuzz/, in its bounded CI profile).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
