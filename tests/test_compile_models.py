"""torch.compile(fullgraph=True) on quantize_model output: every scheme, static and dynamic shapes,
aot_eager and inductor, bit-identical to eager (each layer is one operator with a fake kernel)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import npuquant
from helpers import assert_same_bits


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


def _model(scheme: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    options = {"group_size": 32} if scheme == "w4a16" else {}
    model = npuquant.quantize_model(TinyMLP().to(dtype), scheme=scheme, **options)
    return model.eval()


@pytest.mark.parametrize("scheme", ["w8a8", "w8a8-sym", "w4a16"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_model_is_bit_identical_to_eager(scheme: str, backend: str, dynamic: bool) -> None:
    torch._dynamo.reset()
    dtype = torch.bfloat16 if backend == "aot_eager" else torch.float32
    model = _model(scheme, dtype)
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=dynamic)
    with torch.no_grad():
        for rows in (1, 5, 17):
            x = torch.randn(rows, 64).to(dtype)
            assert_same_bits(compiled(x), model(x))
