"""A quantized mixture-of-experts block written the way Ascend inference code writes it (torch_npu).

    router -> top-k -> tokens sorted by expert -> npu_dynamic_quant (per-expert smooth scales via
    group_index) -> npu_grouped_matmul gate/up (int8 x int8, per-channel x per-token scales, bf16)
    -> SwiGLU -> npu_dynamic_quant -> npu_grouped_matmul down -> weighted combine

Weights are quantized per output channel to int8 once; activations per token at run time. The
result is checked against the same block computed in float32 from the unquantized weights.

Run it on any machine, unmodified: ``npuquant run examples/moe_block.py`` (on an NPU: ``python``).
"""

import torch
import torch_npu

TOKENS, HIDDEN, INTER, EXPERTS, TOP_K = 96, 256, 192, 8, 2
torch.manual_seed(0)


def quantize_per_channel(w):
    """float32 (E, k, n) -> int8 values and float32 scales (E, n): symmetric, per output channel."""
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, scale


# Parameters: float32 masters, int8 copies for the NPU.
router_w = torch.randn(HIDDEN, EXPERTS) / HIDDEN**0.5
w13 = torch.randn(EXPERTS, HIDDEN, 2 * INTER) / HIDDEN**0.5  # gate | up
w2 = torch.randn(EXPERTS, INTER, HIDDEN) / INTER**0.5
w13_q, w13_scale = quantize_per_channel(w13)
w2_q, w2_scale = quantize_per_channel(w2)

x = torch.randn(TOKENS, HIDDEN).to(torch.bfloat16)


def route(hidden):
    logits = hidden.float() @ router_w
    weights, experts = torch.topk(torch.softmax(logits, dim=-1), TOP_K, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)  # (token, k) pairs grouped by expert
    counts = torch.bincount(flat, minlength=EXPERTS)
    return order // TOP_K, weights.reshape(-1)[order], counts


def moe_npu(hidden):
    tokens, weights, counts = route(hidden)
    sorted_x = hidden.npu()[tokens.npu()]
    group_index = torch.cumsum(counts, 0).to(torch.int32).npu()
    smooth = torch.ones(EXPERTS, HIDDEN, dtype=torch.bfloat16).npu()
    q, pertoken = torch_npu.npu_dynamic_quant(sorted_x, smooth_scales=smooth, group_index=group_index)
    group_list = counts.to(torch.int64).npu()  # tokens per expert (group_list_type=1)
    gate_up = torch_npu.npu_grouped_matmul(
        [q], [w13_q.npu()], scale=[w13_scale.to(torch.bfloat16).npu()], per_token_scale=[pertoken],
        group_list=group_list, group_list_type=1, group_type=0, split_item=2, output_dtype=torch.bfloat16,
    )[0]
    gate, up = gate_up.float().chunk(2, dim=-1)
    act = (torch.nn.functional.silu(gate) * up).to(torch.bfloat16)  # SwiGLU
    q2, pertoken2 = torch_npu.npu_dynamic_quant(act)
    down = torch_npu.npu_grouped_matmul(
        [q2], [w2_q.npu()], scale=[w2_scale.to(torch.bfloat16).npu()], per_token_scale=[pertoken2],
        group_list=group_list, group_list_type=1, group_type=0, split_item=2, output_dtype=torch.bfloat16,
    )[0]
    out = torch.zeros(hidden.shape[0], HIDDEN, dtype=torch.float32).npu()
    out.index_add_(0, tokens.npu(), down.float() * weights.npu().unsqueeze(-1))  # combine
    return out.to(torch.bfloat16)


def moe_fp32(hidden):
    tokens, weights, counts = route(hidden)
    sorted_x = hidden.float()[tokens]
    outs, start = [], 0
    for e, c in enumerate(counts.tolist()):
        rows = sorted_x[start : start + c]
        gate, up = (rows @ w13[e]).chunk(2, dim=-1)
        outs.append((torch.nn.functional.silu(gate) * up) @ w2[e])
        start += c
    down = torch.cat(outs)
    out = torch.zeros(hidden.shape[0], HIDDEN)
    return out.index_add_(0, tokens, down * weights.unsqueeze(-1))


y = moe_npu(x).cpu().float()
expected = moe_fp32(x)
rel = ((y - expected).norm() / expected.norm()).item()
print(f"MoE block: {TOKENS} tokens, {EXPERTS} experts, top-{TOP_K}; tokens per expert "
      f"{route(x)[2].tolist()}")
print(f"relative error vs float32: {rel:.4f}")
assert rel < 0.03, rel
print("ok")
