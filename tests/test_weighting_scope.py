"""weighting_scope: step (exact over the whole step) or micro_batch (each micro-batch on all processes)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mixweight.core.distributed import World
from mixweight.core.loss import per_sample_loss
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.domain.doremi import DoReMiWeighting
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig
from mixweight.train.step import accumulate_gradients
from mixweight.train.step_weighting import SampleWeightingStep
from mixweight.weighting import SampleWeighting, sample_weights


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(corpus, n=8):
    manifest = load_manifest(corpus)
    blocks = [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d), limit=2)) for d in manifest.domains]
    return manifest, {"input_ids": torch.cat(blocks)[:n], "domain": torch.arange(n) % len(manifest.domains)}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _split(batch, size):
    n = len(batch["domain"])
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


REDUCTION = SampleWeightingStep(SampleWeighting("linupper", 0.3))


def test_micro_batch_scope_with_one_micro_batch_is_the_step_scope(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus)
    results, grads = {}, {}
    for scope in ("step", "micro_batch"):
        model = build_model(tiny_spec, manifest, seed=0)
        results[scope] = accumulate_gradients(model, [batch], REDUCTION, 0, World(), scope=scope)
        grads[scope] = _grads(model)
    assert torch.equal(results["step"].weights, results["micro_batch"].weights)
    assert torch.equal(results["step"].losses, results["micro_batch"].losses)
    for name in grads["step"]:
        assert torch.equal(grads["step"][name], grads["micro_batch"][name]), name


def test_micro_batch_scope_weights_each_micro_batch_separately(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus)
    micro = _split(batch, 3)  # 3 + 3 + 2 samples: unequal groups
    model = build_model(tiny_spec, manifest, seed=0)
    result = accumulate_gradients(model, micro, REDUCTION, 0, World(), scope="micro_batch")
    got = _grads(model)
    # by hand: each micro-batch's own LinUpper weights over its own losses, the step their mean over 3 groups
    reference = build_model(tiny_spec, manifest, seed=0)
    weighted_loss, weights = 0.0, []
    for mb in micro:
        losses = per_sample_loss(reference(input_ids=mb["input_ids"]).logits, mb["input_ids"])
        w = sample_weights(losses.detach(), "linupper", r=0.3).float() / len(micro)
        weights.append(w)
        weighted_loss = weighted_loss + (w * losses).sum()
    weighted_loss.backward()
    expected = torch.cat(weights)
    torch.testing.assert_close(result.weights, expected, atol=1e-7, rtol=1e-6)
    assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert result.weighted_loss == pytest.approx(weighted_loss.item(), rel=1e-5)
    # Same sums in the same order up to how the backward accumulates: float32 noise (~1e-9 here); a
    # micro-batch weighted as part of the whole step instead moves gradients by ~1e-2 (checked below).
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    step_model = build_model(tiny_spec, manifest, seed=0)
    exact = accumulate_gradients(step_model, micro, REDUCTION, 0, World(), scope="step")
    assert (exact.weights - result.weights).abs().max() > 1e-3  # the two scopes really differ here


def test_micro_batch_scope_is_refused_for_a_weighting_with_a_step_state(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus, n=4)
    model = build_model(tiny_spec, manifest, seed=0)
    doremi = DoReMiWeighting(build_model(tiny_spec, manifest, seed=1), manifest.domains)
    with pytest.raises(MixweightError, match="sample_weighting.scope micro_batch is for loss-based sample weights"):
        accumulate_gradients(model, _split(batch, 2), doremi, 0, World(), scope="micro_batch")
    assert doremi.updates == 0 and all(p.grad is None for p in model.parameters())  # nothing happened
    with pytest.raises(MixweightError, match="'sample_weighting.scope' must be step or micro_batch, got 'global'"):
        TrainConfig(data=".", out=".", sample_weighting={"scope": "global"}).validate()


@pytest.mark.distributed
def test_micro_batch_scope_groups_a_micro_batch_over_all_processes(
    synth_corpus, tiny_spec, tmp_path, free_port, float64_mixweight
):
    """One process with micro-batches of 4 and two with micro-batches of 2 form the same groups of 4."""
    common = [
        "--data",
        synth_corpus,
        "--model",
        tiny_spec,
        "--steps",
        "3",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--eval-every",
        "0",
        "--eval-blocks",
        "2",
        "--sample-weighting",
        "linupper",
        "--grad-accum",
        "2",
        "--sample-weighting.scope",
        "micro_batch",
        "--log-every",
        "1",
        "--no-progress",
    ]
    # float64: one and two processes sum in other orders (see EXACT_ATOL in test_train_weighting.py)
    subprocess.run(
        [*float64_mixweight, "train", "--out", str(tmp_path / "one"), "--batch-size", "4", *common],
        check=True,
        capture_output=True,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    done = subprocess.run(
        [*torchrun, *float64_mixweight[1:], "train", "--out", str(tmp_path / "two"), "--batch-size", "2", *common],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (
        load_file(str(tmp_path / r / "checkpoints" / "step-3" / "model" / "model.safetensors")) for r in ("one", "two")
    )
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-10, rtol=0, msg=key)
    records = [
        [json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("one", "two")
    ]
    weighted = [r for r in records[0] if "weights" in r]
    assert len(weighted) == 3 and all(r["weights"]["max_weight_x_n"] > 1.01 for r in weighted)
