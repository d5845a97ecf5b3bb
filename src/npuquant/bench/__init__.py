"""``npuquant bench``: times the ops against the eager torch composition and memory bandwidth.

    npuquant bench                      # every op family, default shapes
    npuquant bench anti_quant gemm      # pick ops or families
    npuquant bench --isa avx2 --threads 2 --repeat 9 --json
    npuquant bench --quick              # tiny shapes (smoke test)

Per case (best of ``--repeat`` samples): time of the public op (output allocated per call, as users call it),
Gelem/s, effective GB/s (bytes the op must read and write) and that as % of ``Tensor.copy_``
bandwidth measured in the same process; the native operator alone, without the public function's
checks (``kernel``); and the speed-up over the eager torch composition of the same maths.

Extension: a module per op family (``elementwise.py``, ``gemm.py``, ...) registers a case
factory with ``@harness.register("<family>")``; list it in ``FAMILY_MODULES``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import sys

import torch

from npuquant import _native

from . import harness

FAMILY_MODULES = ("elementwise", "gemm", "grouped_gemm", "int4_matmul", "overhead")

# (key, header, format); a column is shown when some row has the key.
COLUMNS = [
    ("op", "op", "{}"),
    ("variant", "variant", "{}"),
    ("shape", "shape", "{}"),
    ("ms", "ms", "{:.4f}"),
    ("gelem_s", "Gelem/s", "{:.2f}"),
    ("gop_s", "GOP/s", "{:.1f}"),
    ("gb_s", "GB/s", "{:.1f}"),
    ("pct_copy", "%copy", "{:.0f}%"),
    ("kernel_gb_s", "kernel GB/s", "{:.1f}"),
    ("kernel_pct_copy", "kernel %copy", "{:.0f}%"),
    ("vs_eager", "x eager", "{:.1f}x"),
    ("skipped", "skipped", "{}"),
]


def load_families() -> None:
    """Imports every family module that exists (each registers its cases on import)."""
    for name in FAMILY_MODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use ROWSxCOLS, e.g. 576x1536") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: dimensions must be positive")
    return dims


def _shapes(text: str) -> list[tuple[int, ...]]:
    return [_shape(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npuquant bench", description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help="op or family names to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--isa", choices=["scalar", "avx2", "avx512"], help="cap the native kernel variant")
    parser.add_argument("--threads", type=int, help="threads (torch.set_num_threads; native kernels follow it)")
    parser.add_argument("--repeat", type=int, default=None, help="timed samples per measurement (fastest reported)")
    parser.add_argument("--shapes", type=_shapes, help="comma-separated shapes, e.g. 1x4096,576x1536")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few samples (smoke test)")
    return parser.parse_args(argv)


def _fmt(row: dict[str, object], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "shape":
        return "x".join(str(d) for d in value)  # type: ignore[union-attr]
    return fmt.format(value)


def render(head: dict[str, object], copy_gbps: float, rows: list[dict[str, object]]) -> str:
    lines = [
        f"npuquant bench  cpu: {head['cpu']}  isa: {head['isa']} (best {head['best_isa']})  "
        f"threads: {head['threads']}  torch {head['torch']} ({head['torch_cpu_capability']})",
        f"Tensor.copy_ bandwidth (float32, read + write, preallocated): {copy_gbps:.1f} GB/s",
        "",
    ]
    cols = [(k, h, f) for k, h, f in COLUMNS if any(k in r for r in rows)]
    table = [[h for _, h, _ in cols]] + [[_fmt(r, k, f) for k, _, f in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for n, line in enumerate(table):
        lines.append(
            "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    load_families()
    opts = harness.Options(ops=list(args.ops), shapes=args.shapes, quick=args.quick)
    if args.quick:
        opts.repeat, opts.min_time = 2, 2e-4
    if args.repeat is not None:
        if args.repeat < 1:
            print("npuquant bench: --repeat must be at least 1", file=sys.stderr)
            return 2
        opts.repeat = args.repeat
    unknown = sorted(set(opts.ops) - harness.known_names())
    if unknown:
        print(f"npuquant bench: unknown op {', '.join(unknown)}; choose from {', '.join(sorted(harness.known_names()))}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.isa and args.isa not in _native.supported_isas():
        print(f"npuquant bench: --isa {args.isa} is not supported here (supported: {_native.supported_isas()})",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.threads is not None and args.threads < 1:
        print("npuquant bench: --threads must be at least 1", file=sys.stderr)
        return 2

    previous_threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        with _native.isa_limit(args.isa) if args.isa else contextlib.nullcontext():  # else keep NPUQUANT_ISA
            head = harness.header()
            copy_gbps = harness.copy_bandwidth(opts)
            rows = []
            for case in harness.collect(opts):
                rows.append(harness.measure(case, opts))
                if not args.json:
                    print(f"  ... {case.op} {case.variant} {'x'.join(map(str, case.shape))}", file=sys.stderr)
            # measured again at the end: the better of the two is less disturbed by other processes
            copy_gbps = max(copy_gbps, harness.copy_bandwidth(opts))
            harness.add_copy_ratios(rows, copy_gbps)
    finally:
        torch.set_num_threads(previous_threads)
    if args.json:
        print(json.dumps({"header": head, "copy_gb_s": copy_gbps, "results": rows}))
    else:
        print(render(head, copy_gbps, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
