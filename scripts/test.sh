#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
start=$(date +%s)
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
echo "test.sh: suite took $(( $(date +%s) - start ))s, pytest exit $status"
if [ "$status" = "5" ]; then
    echo "test.sh: no tests were collected: that is a failure" >&2
    exit 1
fi
exit "$status"
