"""Training FLOPs (mixweight/core/flops.py, train/compute.py): the count against published totals, and what
every run and weights artifact records."""

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mixweight.core.flops import (
    ModelShape,
    forward_flops_per_token,
    matmul_params,
    model_shape,
    training_flops,
    training_flops_per_token,
)
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.train.compute import run_compute
from mixweight.train.loop import train


def test_gpt2_124m_shape_matches_the_published_count_of_gpt3_small():
    # GPT-3 Small (Brown et al. 2020, Table D.1): GPT-2 124M's 12 layers x 768 with a 2048-token context, 300B
    # tokens, "2.25E+20" FLOPs (6 N D with N rounded to 125M; the table leaves attention out).
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_positions=2048))
    shape = model_shape(model, 2048)
    assert shape.matmul_params == 123_653_376  # all 125.2M less the 2048 x 768 position table (wte is the output)
    tokens = 300e9
    assert 6 * shape.matmul_params * tokens == pytest.approx(2.25e20, rel=0.02)
    attention = 12 * 12 * 768 * 2048 * tokens
    assert training_flops(shape, tokens) == pytest.approx(6 * shape.matmul_params * tokens + attention, rel=1e-12)


def test_llama_405b_config_matches_the_published_count():
    # Llama 3 (Dubey et al. 2024): the 405B model (126 layers, 16384 wide, FFN 53248, 128 heads, 8 KV heads,
    # vocabulary 128256, untied) pre-trained on 15.6T tokens with "3.8 x 10^25 FLOPs", which is 6 N D.
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=16384,
        intermediate_size=53248,
        num_hidden_layers=126,
        num_attention_heads=128,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    shape = model_shape(model, 8192)
    total = sum(p.numel() for p in model.parameters())
    assert shape.matmul_params == total - 128256 * 16384  # only the input table is a lookup
    assert 6 * shape.matmul_params * 15.6e12 == pytest.approx(3.8e25, rel=0.01)
    # the attention term the published total leaves out: 8% more at a context of 8192
    assert training_flops(shape, 15.6e12) / (6 * shape.matmul_params * 15.6e12) == pytest.approx(1.084, abs=0.002)


def test_tied_and_untied_output_projections_count_once():
    tied, untied = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50), GPT2Config(n_layer=1, n_embd=16, n_head=2)
    untied.vocab_size, untied.tie_word_embeddings = 50, False
    a, b = GPT2LMHeadModel(tied), GPT2LMHeadModel(untied)
    assert matmul_params(a) == matmul_params(b)  # the same matmuls per token
    assert sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters()) == 50 * 16


def test_training_is_three_forwards():
    shape = ModelShape(matmul_params=1000, layers=2, attention_width=8, seq_len=16)
    assert forward_flops_per_token(shape) == 2 * 1000 + 4 * 2 * 8 * 16
    assert training_flops_per_token(shape) == 3 * forward_flops_per_token(shape)


@pytest.fixture
def run_config(synth_corpus, tiny_spec, train_config, tmp_path):
    def build(name, **fields):
        defaults = dict(steps=3, batch_size=4, warmup_steps=1, eval_every=0, eval_blocks=2, progress=False)
        return train_config(synth_corpus, tiny_spec, tmp_path / name, **{**defaults, **fields})

    return build


def _compute(run_dir) -> dict:
    return json.loads((Path(run_dir) / "eval.json").read_text())["compute"]


def test_a_run_records_its_flops_and_a_whole_step_forward(run_config, synth_corpus, tiny_spec):
    plain = run_config("plain")
    train(plain)
    weighted = run_config("weighted", sample_weighting="linupper", grad_accum=2)
    train(weighted)
    manifest = load_manifest(synth_corpus)
    shape = model_shape(build_model(tiny_spec, manifest, 0), manifest.seq_len)
    tokens = 4 * manifest.seq_len
    record = _compute(plain.out)
    assert record["tokens_per_step"] == tokens and record["steps"] == 3 and record["extra_flops_per_step"] == {}
    assert record["flops"] == pytest.approx(3 * training_flops(shape, tokens), rel=1e-12)
    # LinUpper over 2 micro-batches weighs every loss of the step before any backward: one more forward
    accumulated = _compute(weighted.out)
    forward = forward_flops_per_token(shape) * 2 * tokens
    assert accumulated["extra_flops_per_step"] == {"whole_step_forward": pytest.approx(forward, rel=1e-12)}
    assert accumulated["flops_per_step"] == pytest.approx(training_flops(shape, 2 * tokens) * 4 / 3, rel=1e-12)


def test_run_compute_adds_what_the_objective_declares():
    class Declares:
        def extra_flops(self, model, shape, tokens, micro_batches):
            return {"reference_forward": 5.0 * tokens}

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    record = run_compute(model, 32, 64, 1, 10, Declares())
    assert record["extra_flops_per_step"] == {"reference_forward": 320.0}
    assert record["flops"] == pytest.approx(10 * (training_flops(model_shape(model, 32), 64) + 320.0))
    assert run_compute(model, 32, 64, 1, 10, object())["extra_flops_per_step"] == {}
