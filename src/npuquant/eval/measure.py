"""What ``npuquant eval`` measures: perplexity, prefill throughput and greedy decode throughput.

* Perplexity: the token ids are cut into consecutive windows of ``seq_len`` tokens; each window
  is one forward pass predicting its tokens 2..seq_len from the ones before;
  ``exp(total negative log-likelihood / predicted tokens)``.
* Prefill: one forward pass over the prompt that produces the next-token logits
  (``logits_to_keep=1``, as generation does); tokens per second = prompt length / time.
* Decode: after that prefill, greedy generation of ``new_tokens`` tokens one forward pass at a
  time with the KV cache; tokens per second = new tokens / time of those passes.

Timings come from several rounds; the best round is reported (the usual way to measure code
speed on a machine with other load, like ``timeit``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F


def progress(iterable: Iterable[Any], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterator[Any]:
    """A tqdm progress bar on stderr when tqdm is installed and enabled; the bare iterable otherwise."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(iterable, desc=desc, total=total, leave=False, mininterval=0.5, dynamic_ncols=True)
            return
    yield from iterable


def perplexity(
    model: torch.nn.Module, ids: list[int], seq_len: int, *, desc: str = "perplexity", show_progress: bool = True
) -> float:
    """Perplexity of ``model`` on ``ids`` in non-overlapping windows of ``seq_len`` tokens (a short last window kept)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    starts = [s for s in range(0, len(ids), seq_len) if len(ids) - s >= 2]
    if not starts:
        raise ValueError(f"need at least 2 tokens to compute perplexity, got {len(ids)}")
    total_nll, predicted = 0.0, 0
    with torch.inference_mode():
        for start in progress(starts, desc=desc, enabled=show_progress):
            window = torch.tensor([ids[start : start + seq_len]], dtype=torch.long)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1].to(torch.float32)
            total_nll += float(F.cross_entropy(logits, window[0, 1:], reduction="sum"))
            predicted += window.shape[1] - 1
    return math.exp(total_nll / predicted)


def _next_token(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].argmax(-1, keepdim=True)


def prefill_and_decode(model: torch.nn.Module, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """One round: timed prefill of ``prompt``, then ``new_tokens`` timed greedy decode steps.

    Returns:
        ``(prefill seconds, decode seconds, generated token ids)``.
    """
    from transformers import DynamicCache

    ids = torch.tensor([prompt], dtype=torch.long)
    generated: list[int] = []
    with torch.inference_mode():
        cache = DynamicCache()
        t0 = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = _next_token(out.logits)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            generated.append(int(token))
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = _next_token(out.logits)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, generated
