#!/usr/bin/env bash
# The main job: set up (first run only), quantize SmolLM2-135M with each scheme and report
# perplexity and prefill/decode speed against fp32. Extra arguments go to `npuquant eval`.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --eval
exec .venv/bin/npuquant eval "$@"
