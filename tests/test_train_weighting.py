"""Sample weighting inside the trainer: exact over the whole step, and free when uniform."""

import functools
import json
import re
import subprocess
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import mixweight.train.loop as loop
from mixweight.core.distributed import World
from mixweight.core.loss import per_sample_loss
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig
from mixweight.train.objective import WeightedLoss
from mixweight.train.step import MeanWeighting, StepWeighting, accumulate_gradients
from mixweight.train.step_weighting import SampleWeightingStep, step_weighting_from_config
from mixweight.weighting import SAMPLE_WEIGHTINGS, STRATEGIES, SampleWeighting, sample_weights


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig; any default can be overridden."""
    return functools.partial(
        train_config,
        steps=6,
        batch_size=8,
        lr=3e-3,
        final_lr=3e-4,
        warmup_steps=1,
        eval_every=0,
        eval_blocks=4,
        checkpoint_every=100,
        log_every=1,
        progress=False,
        sample_weighting=LINUPPER,
    )


LINUPPER = {"name": "linupper", "r": 0.4, "histogram_every": 3}


def _final_params(run_dir, step=6):
    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model" / "model.safetensors"))


def _assert_close_params(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# Runs that must be equal but sum in another order (one batch of 8 or two of 4, one process or two)
# are compared in float64. In float32 the orders differ by ~1e-7 relative, and Adam, which divides
# each gradient by its own running RMS, turns that noise on near-zero gradients into parameter
# differences of up to ~lr per step: 1.5e-6 on one machine, 2.1e-5 on another after 6 steps. In
# float64 the same runs differ by ~4e-15 (measured), so EXACT_ATOL leaves 10^5 of headroom for other
# BLAS builds while any real error (a micro-batch or sample weighted wrongly) moves parameters by
# ~lr = 3e-3 within the first step.
EXACT_ATOL = 1e-10


@contextmanager
def _float64():
    """Models built (and so trained) in float64: the per-sample losses stay float32, per row, as in float32 runs."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _batch(corpus, n=8):
    manifest = load_manifest(corpus)
    blocks = [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d), limit=2)) for d in manifest.domains]
    tokens = torch.cat(blocks)[:n]
    return manifest, {"input_ids": tokens, "domain": torch.arange(n) % len(manifest.domains)}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_two_accumulated_micro_batches_equal_one_batch(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus)
    reduction = SampleWeightingStep(SampleWeighting("linupper", 0.4))
    results, grads = [], []
    for split in ([batch], [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]):
        model = build_model(tiny_spec, manifest, seed=0)
        results.append(accumulate_gradients(model, split, reduction, step=0, world=World()))
        grads.append(_grads(model))
    torch.testing.assert_close(results[0].weights, results[1].weights)
    assert not torch.allclose(results[0].weights, torch.full((8,), 1 / 8))  # really reweighted
    # First-step gradients, no optimizer: float32 summation order moves them by ~eps32 x |g| (measured
    # 4e-9 with |g| <= 0.09), far inside atol 1e-6; a wrongly weighted micro-batch moves them by ~|g|.
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_weights_are_the_library_function_of_the_step_losses(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus)
    model = build_model(tiny_spec, manifest, seed=0)
    with torch.no_grad():
        losses = per_sample_loss(model(input_ids=batch["input_ids"]).logits, batch["input_ids"])
    reduction = SampleWeightingStep(SampleWeighting("quadratic", 0.7))
    result = accumulate_gradients(model, [batch], reduction, step=0, world=World())
    torch.testing.assert_close(result.weights, sample_weights(losses, "quadratic", r=0.7).float())
    assert result.weighted_loss == pytest.approx((result.weights * losses).sum().item(), rel=1e-5)


class _InfLossModel(torch.nn.Module):
    """Logits that make sample 0's loss infinite and the others ordinary."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(16))

    def forward(self, input_ids):
        logits = self.bias.expand(*input_ids.shape, 16).clone()
        logits[0, :, :] = torch.where(torch.arange(16) == 0, float("-inf"), 0.0)  # target id 0 impossible
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("reduction", [MeanWeighting(), SampleWeightingStep(SampleWeighting("linupper", 0.4))])
def test_a_non_finite_sample_gets_zero_weight_and_poisons_nothing(reduction):
    model = _InfLossModel()
    batch = {"input_ids": torch.zeros(4, 5, dtype=torch.long), "domain": torch.zeros(4, dtype=torch.long)}
    result = accumulate_gradients(model, [batch], reduction, step=0, world=World())
    assert not torch.isfinite(result.losses[0]) and result.n_finite == 3
    assert result.weights[0] == 0 and result.weights[1:].sum().item() == pytest.approx(1.0)
    # The three finite samples predict uniformly over 16 ids with target 0: d(mean loss)/d(bias) = 1/16 - onehot(0),
    # and any weighting of equal losses is uniform; a NaN or inf leaking from sample 0 would show here.
    expected = torch.full((16,), 1 / 16) - torch.nn.functional.one_hot(torch.tensor(0), 16)
    torch.testing.assert_close(model.bias.grad, expected, rtol=0, atol=1e-6)


def _reference_step(model, micro_batches, weigh, scope="step"):
    """A step written out plainly: forward, weights from the detached losses of the weighting group,
    backward of sum_i w_i l_i micro-batch by micro-batch (so .grad accumulates in the step's order)."""
    groups = [[mb] for mb in micro_batches] if scope == "micro_batch" else [micro_batches]
    for group in groups:
        with torch.no_grad():
            losses = torch.cat(
                [per_sample_loss(model(input_ids=mb["input_ids"]).logits, mb["input_ids"]) for mb in group]
            )
        weights = weigh(losses) / len(groups)
        start = 0
        for mb in group:
            mb_losses = per_sample_loss(model(input_ids=mb["input_ids"]).logits, mb["input_ids"])
            (weights[start : start + len(mb_losses)] * mb_losses).sum().backward()
            start += len(mb_losses)


@pytest.mark.parametrize(
    "reduction, scope",
    [
        (MeanWeighting(), "step"),  # needs_whole_step False: 1/N as it goes
        (SampleWeightingStep(SampleWeighting("linupper", 0.4)), "step"),  # whole step
        (SampleWeightingStep(SampleWeighting("linupper", 0.4)), "micro_batch"),  # each micro-batch a group
    ],
    ids=["mean", "whole-step", "micro-batch-scope"],
)
@pytest.mark.parametrize("grad_accum", [1, 3])
def test_each_accumulation_branch_gives_the_plain_reference_gradients_bit_for_bit(
    synth_corpus, tiny_spec, reduction, scope, grad_accum
):
    manifest, batch = _batch(synth_corpus, n=12)
    micro = [{k: v[i : i + 12 // grad_accum] for k, v in batch.items()} for i in range(0, 12, 12 // grad_accum)]
    model = build_model(tiny_spec, manifest, seed=0)
    result = accumulate_gradients(model, micro, reduction, step=0, world=World(), scope=scope)
    reference = build_model(tiny_spec, manifest, seed=0)
    if reduction.needs_whole_step:
        _reference_step(reference, micro, lambda losses: sample_weights(losses, "linupper", r=0.4).float(), scope)
    else:
        _reference_step(reference, micro, lambda losses: torch.full_like(losses, 1 / 12))
    got, expected = _grads(model), _grads(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-6) and len(result.losses) == 12


class _ByDomain(StepWeighting):
    """Overrides nothing but `weights`: weight proportional to domain id + 1 (the base class does the rest)."""

    def weights(self, losses, domains, step, signal=None):
        scores = (domains + 1).float()
        return scores / scores.sum()


def test_a_weighting_that_only_defines_weights_works_in_a_step_and_a_run(
    synth_corpus, tiny_spec, tmp_path, make_config
):
    manifest, batch = _batch(synth_corpus)
    micro = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    objective = WeightedLoss(_ByDomain())
    model = build_model(tiny_spec, manifest, seed=0)
    result = objective.compute_gradients(model, micro, 0, World(), None, 1e-3)
    expected = (batch["domain"] + 1).float() / (batch["domain"] + 1).sum()
    assert torch.equal(result.weights, expected)  # the base class's default: weighed over the whole step
    reference = build_model(tiny_spec, manifest, seed=0)
    _reference_step(reference, micro, lambda losses: expected)
    for name, grad in _grads(reference).items():
        assert torch.equal(_grads(model)[name], grad), name
    assert objective.state_dict() == {} and objective.step_metrics() == {}
    objective.load_state_dict({})
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=2, checkpoint_every=1), objective)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "linuper"}, "'sample_weighting.name' 'linuper' is not a sample weighting; did you mean 'linupper'? "),
        ({"name": "uniform"}, "valid: none, linupper, quadratic, extremes"),  # the library's name
        ({"schedule": "cosin"}, "'sample_weighting.schedule' 'cosin' is not a schedule; did you mean 'cosine'?"),
        ({"r": 0.0}, "'sample_weighting.r' must be > 0, got 0.0"),
        ({"r": float("nan")}, "'sample_weighting.r': expected a number, got nan"),
        ({"start": -1.0}, "'sample_weighting.start' must be > 0, got -1.0"),
        ({"cap": 0.5}, "'sample_weighting.cap' must be >= 1"),
    ],
)
def test_the_config_checks_each_sample_weighting_value_once(fields, message):
    with pytest.raises(MixweightError, match=re.escape(message)):
        TrainConfig(data=".", out=".", sample_weighting=fields).validate()


def test_sample_weighting_names_are_case_insensitive_and_lower_cased_where_they_enter():
    config = TrainConfig(data=".", out=".", sample_weighting="LinUpper")  # get_strategy's rule: any case
    config.validate()
    assert config.sample_weighting.name == "linupper"  # what config.yaml, the reduction and the report see
    assert isinstance(step_weighting_from_config(config), SampleWeightingStep)
    with pytest.raises(MixweightError, match="did you mean 'linupper'"):
        TrainConfig(data=".", out=".", sample_weighting="LinUper").validate()


def test_sample_weighting_names_come_from_the_strategy_registry():
    assert SAMPLE_WEIGHTINGS == ("none", *[name for name in STRATEGIES if name != "uniform"])
    for name in SAMPLE_WEIGHTINGS:
        config = TrainConfig(data=".", out=".", sample_weighting=name)
        config.validate()
        reduction = step_weighting_from_config(config)
        assert isinstance(reduction, MeanWeighting) == (name == "none")  # "none": the plain mean, nothing else


def test_trainer_accumulation_equals_one_big_batch(synth_corpus, tiny_spec, tmp_path, make_config):
    with _float64():  # see EXACT_ATOL
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "one", batch_size=8, grad_accum=1))
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "two", batch_size=4, grad_accum=2))
    one = _final_params(tmp_path / "one")
    assert all(v.dtype == torch.float64 for v in one.values())
    _assert_close_params(one, _final_params(tmp_path / "two"), atol=EXACT_ATOL)


def test_huge_r_reproduces_the_unweighted_run(synth_corpus, tiny_spec, tmp_path, make_config):
    with _float64():  # see EXACT_ATOL; at r = 1e9 the weights are 1/N to float32 precision
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "plain", sample_weighting="none"))
        loop.train(
            make_config(
                synth_corpus,
                tiny_spec,
                tmp_path / "big-r",
                sample_weighting={**LINUPPER, "r": 1e9},
                grad_accum=2,
                batch_size=4,
            )
        )
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "linupper"))
    plain = _final_params(tmp_path / "plain")
    _assert_close_params(plain, _final_params(tmp_path / "big-r"), atol=EXACT_ATOL)
    linupper = _final_params(tmp_path / "linupper")
    assert any(not torch.allclose(plain[k], linupper[k], atol=1e-4) for k in plain)  # weighting changes training


def test_weight_metrics_are_logged(synth_corpus, tiny_spec, tmp_path, make_config):
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", sample_weighting={**LINUPPER, "cap": 2.0}))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "weights" in r]
    assert len(steps) == 6
    for record in steps:
        stats = record["weights"]
        assert 1.0 <= stats["max_weight_x_n"] <= 2.0 + 1e-5  # the cap holds
        assert 0 < stats["ess_fraction"] <= 1.0
        domain_weights = [d["weight_x_n"] for d in record["domains"].values()]
        assert min(domain_weights) < 1.0 < max(domain_weights) or stats["max_weight_x_n"] == pytest.approx(1.0)
    histograms = [r["weights"]["histogram_x_n"] for r in steps if "histogram_x_n" in r["weights"]]
    assert len(histograms) == 2 and all(sum(h["counts"]) == 8 for h in histograms)


@pytest.mark.distributed
def test_two_processes_equal_one_process(synth_corpus, tiny_spec, tmp_path, float64_mixweight):
    common = [
        "--data",
        synth_corpus,
        "--model",
        tiny_spec,
        "--steps",
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--eval-every",
        "0",
        "--eval-blocks",
        "4",
        "--sample-weighting",
        "linupper",
        "--no-progress",
    ]
    # Both in float64: the summation order differs between 1 and 2 processes (see EXACT_ATOL).
    subprocess.run(
        [*float64_mixweight, "train", "--out", str(tmp_path / "one"), "--batch-size", "8", *common],
        check=True,
        capture_output=True,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    done = subprocess.run(
        [*torchrun, *float64_mixweight[1:], "train", "--out", str(tmp_path / "two"), "--batch-size", "4", *common],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_close_params(_final_params(tmp_path / "one", 4), _final_params(tmp_path / "two", 4), atol=EXACT_ATOL)
    metrics = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    for a, b in zip(*metrics):
        if "weights" in a:
            assert a["weights"]["max_weight_x_n"] == pytest.approx(b["weights"]["max_weight_x_n"], rel=1e-4)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
