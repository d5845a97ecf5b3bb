"""``npuquant demo``: a short tour of the ops on CPU, printing inputs and results."""

from __future__ import annotations

import argparse

import torch

import npuquant
from npuquant import _native


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="npuquant demo", description=__doc__).parse_args(argv)
    print(f"npuquant {npuquant.__version__}, torch {torch.__version__}, kernels: {_native.isa()}, "
          f"threads: {_native.num_threads()}")

    x = torch.tensor([1, 2, 3, 4], dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([2.0]), offset=torch.tensor([2.0]), dst_dtype=torch.float16)
    print("npu_anti_quant([1,2,3,4], scale=2, offset=2)      ->", out.tolist())

    packed = npuquant.pack_int4(torch.arange(-8, 8, dtype=torch.int8))
    print("pack_int4(-8..7)                                   ->", packed.tolist())
    print("npu_anti_quant(packed int4, scale=0.5, bfloat16)   ->",
          npuquant.npu_anti_quant(packed, torch.tensor([0.5]), dst_dtype=torch.bfloat16).tolist())

    for name in ("npu_dynamic_quant_asymmetric", "npu_dynamic_quant"):
        fn = getattr(npuquant, name, None)
        if fn is not None:
            xs = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [-4, -3, -2, -1, 0, 1, 2, 3]], dtype=torch.float16)
            print(f"{name}(2 rows) ->", [t.tolist() for t in fn(xs)])
    return 0
