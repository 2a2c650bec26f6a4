#!/usr/bin/env bash
# The whole job on an embedded default, on this machine: a password-protected "Fargate" source Redis,
# a serverless-like TLS target, moto for SSM; then plan, run, cutover --dry-run, cutover, an
# application-side check, rollback and the check again. Everything it starts is stopped at the end.
#   scripts/demo.sh [--keys N]     (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec .venv/bin/python scripts/demo.py "$@"
