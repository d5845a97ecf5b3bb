#!/usr/bin/env bash
# Set up (first run only; eval dependencies too, so the model-loader tests run), then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --eval
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest "$@"
