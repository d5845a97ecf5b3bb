#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv in .venv with the pinned dev
# requirements (torch 2.13.0 CPU) and npuquant installed editable, C kernels compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.npuquant-setup
if [ ! -f "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    touch "$stamp"
fi
# Always rebuild the extension: cheap, and a stale .so after a pull would test old kernels.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . >/dev/null
