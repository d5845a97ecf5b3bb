#!/usr/bin/env bash
# Builds the native operators with AddressSanitizer + UndefinedBehaviorSanitizer (any report is
# fatal) into build/sanitize/, then runs the tests that drive native code against that build.
# Bounded: a few minutes on 2 cores. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/sanitize
rm -rf "$out/lib"
mkdir -p "$out"
if ! NPUQUANT_SANITIZE=1 .venv/bin/python setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp" \
    >"$out/build.log" 2>&1; then
    cat "$out/build.log" >&2
    exit 1
fi
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
# Leaks: Python and torch keep allocations alive until exit by design, so leak checking is off.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export NPUQUANT_LIBRARY="$PWD/$out/lib/npuquant/_C.abi3.so"
export NPUQUANT_HYPOTHESIS_EXAMPLES=${NPUQUANT_HYPOTHESIS_EXAMPLES:-20}
LD_PRELOAD="$asan:$ubsan" exec .venv/bin/python -m pytest -p no:cacheprovider \
    tests/test_operators.py tests/test_fuzz_native.py tests/test_gemv_int4.py tests/test_w4a8.py \
    tests/test_grouped_matmul.py "$@"
