#!/usr/bin/env bash
# The main job: set up (first run only) and run npuquant's demonstration.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/npuquant demo "$@"
