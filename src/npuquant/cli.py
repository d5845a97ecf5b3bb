"""The ``npuquant`` command: ``info``, ``demo``, ``bench``, ``eval``, ``run``.

Each heavy subcommand lives in its own module and is imported only when used, so
``npuquant info`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys

SUBCOMMANDS = {
    # name: (module providing main(argv) -> int, one-line help)
    "demo": ("npuquant.demo", "run a short demonstration of the ops"),
    "bench": ("npuquant.bench", "benchmark the kernels against eager torch and memory bandwidth"),
    "eval": ("npuquant.eval", "quantize SmolLM2-135M and report perplexity and speed"),
    "run": ("npuquant.compat.run", "run a script written for torch_npu, with the compatibility layer installed"),
}


def info() -> dict[str, object]:
    """What this installation is and what it detected: versions, CPU features, kernel variants, threads."""
    import torch

    import npuquant
    from npuquant import _native

    return {
        "npuquant": npuquant.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "native_library": "loaded" if _native.available() else f"missing ({_native.load_error})",
        "cpu_features": _native.cpu_features(),
        "isa": _native.isa(),
        "threads": _native.num_threads(),
        "kernels": {name: k["variant"] for name, k in _native.kernels().items()},
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="npuquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print versions, CPU features, kernel variant and threads")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    if args.command == "info":
        data = info()
        if args.json:
            print(json.dumps(data))
        else:
            from npuquant import _native

            kernels = _native.kernels()
            for key, value in data.items():
                if key == "kernels":
                    print("kernels         variant in force (of the variants, best first) and the ops on it")
                    for name, k in kernels.items():
                        chosen = f"{k['variant']} ({', '.join(k['variants'])})"
                        print(f"  {name:13s} {chosen:36s} {k['ops']}")
                    continue
                shown = " ".join(value) if isinstance(value, list) else value
                print(f"{key:15s} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
