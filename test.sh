#!/usr/bin/env bash
# Set up (first run only), then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest "$@"
