import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import mixweight.train.loop as loop
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.errors import MixweightError
from mixweight.train.checkpoint import list_checkpoints
from mixweight.train.objective import WeightedLoss
from mixweight.train.optim import lr_multiplier
from mixweight.train.validation import evaluate_domains, load_validation


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig; any default can be overridden."""
    return functools.partial(
        train_config,
        steps=20,
        batch_size=8,
        lr=3e-3,
        final_lr=3e-4,
        warmup_steps=2,
        eval_every=5,
        eval_blocks=8,
        checkpoint_every=10,
        log_every=1,
        progress=False,
    )


def _metrics_without_timing(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time", None)
    return records


def _params(run_dir, step) -> dict:
    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model" / "model.safetensors"))


def test_training_lowers_validation_loss(synth_corpus, tiny_spec, tmp_path, make_config):
    manifest = load_manifest(synth_corpus)
    val = load_validation(synth_corpus, manifest, 8)
    before = evaluate_domains(build_model(tiny_spec, manifest, seed=0), val, 16)
    after = loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=60))
    assert after["average_loss"] < before["average_loss"] - 0.5
    # the easy domains fall far below the uniform-guess loss; the noise domain cannot go below ln V
    assert after["domains"]["unigram"]["loss"] < math.log(256) - 1.0
    assert after["domains"]["noise"]["loss"] > manifest.irreducible_loss["noise"] - 0.05
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert written["step"] == 60 and written["average_loss"] == pytest.approx(after["average_loss"])
    assert set(written["domains"]) == set(manifest.domains)
    assert written["worst_domain"] == max(written["domains"], key=lambda d: written["domains"][d]["loss"])


def test_per_domain_evaluation_matches_a_hand_computation(synth_corpus, tiny_spec):
    manifest = load_manifest(synth_corpus)
    model = build_model(tiny_spec, manifest, seed=1)
    val = {"a": torch.randint(0, 256, (3, 16)), "b": torch.randint(0, 256, (2, 16))}
    result = evaluate_domains(model, val, batch_size=2)
    expected = {}
    with torch.no_grad():
        for name, blocks in val.items():
            total, count = 0.0, 0
            for block in blocks:
                logits = model(input_ids=block[None]).logits[0]
                log_probs = torch.log_softmax(logits.double(), dim=-1)
                for t in range(len(block) - 1):
                    total -= log_probs[t, block[t + 1]].item()
                    count += 1
            expected[name] = total / count
    for name in val:
        assert result["domains"][name]["loss"] == pytest.approx(expected[name], rel=1e-5)
        assert result["domains"][name]["perplexity"] == pytest.approx(math.exp(expected[name]), rel=1e-5)
        assert result["domains"][name]["tokens"] == len(val[name]) * 15
    assert result["average_loss"] == pytest.approx((expected["a"] + expected["b"]) / 2, rel=1e-5)
    assert result["worst_domain"] == max(expected, key=expected.get)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_a_crash_is_exact(synth_corpus, tiny_spec, tmp_path, crash_at_step, grad_accum, make_config):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loop.train(make_config(synth_corpus, tiny_spec, straight, grad_accum=grad_accum))

    with crash_at_step(13), pytest.raises(KeyboardInterrupt):
        loop.train(make_config(synth_corpus, tiny_spec, resumed, grad_accum=grad_accum))
    assert [s for s, _ in list_checkpoints(resumed)] == [10]
    loop.train(make_config(synth_corpus, tiny_spec, resumed, grad_accum=grad_accum, resume=True))

    a, b = _params(straight, 20), _params(resumed, 20)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics_without_timing(straight) == _metrics_without_timing(resumed)


def test_a_run_directory_with_checkpoints_needs_resume_and_the_same_config(
    synth_corpus, tiny_spec, tmp_path, make_config
):
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=10))
    with pytest.raises(MixweightError, match="--resume"):
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=10))
    with pytest.raises(MixweightError, match="lr"):
        loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=10, lr=1e-2, resume=True))


def test_checkpoint_from_another_model_is_refused(synth_corpus, tiny_spec, tmp_path, make_config):
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=10))
    config_path = tmp_path / "run" / "config.yaml"
    other = tmp_path / "other.json"
    spec = json.loads(open(tiny_spec).read())
    other.write_text(json.dumps({**spec, "n_embd": 64}))
    config_path.write_text(config_path.read_text().replace(tiny_spec, str(other)))
    (tmp_path / "run" / "inputs.json").unlink()  # as in a run from before inputs.json: the weights are the last check
    with pytest.raises(MixweightError, match="another model"):
        loop.train(make_config(synth_corpus, str(other), tmp_path / "run", steps=12, resume=True))


def test_checkpoint_is_loadable_by_from_pretrained(synth_corpus, tiny_spec, tmp_path, make_config):
    from transformers import AutoModelForCausalLM

    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=4))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step-4" / "model")
    assert model.config.vocab_size == 256


def test_model_spec_conflicts_are_errors(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 50257}))
    with pytest.raises(MixweightError, match="vocab_size 50257 conflicts"):
        build_model(str(spec), manifest, seed=0)
    spec.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 32}))
    with pytest.raises(MixweightError, match="seq_len 64 exceeds the model's 32 positions"):
        build_model(str(spec), manifest, seed=0)
    with pytest.raises(MixweightError, match="available: .*gpt2-tiny"):
        build_model("no-such-spec", manifest, seed=0)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "gpt2-mini", "llama-1.4b"])
def test_shipped_specs_build_configs(synth_corpus, name):
    from mixweight.core.model import build_config

    config = build_config(name, load_manifest(synth_corpus))
    assert config.vocab_size == 256
    if name in ("gpt2-tiny", "llama-tiny"):
        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        assert 1e6 <= params <= 3e6


def test_lr_schedule_warms_up_then_decays_to_the_final_rate():
    multipliers = [lr_multiplier(s, warmup_steps=10, total_steps=100, final_ratio=0.2) for s in range(100)]
    assert multipliers[0] == pytest.approx(0.1) and multipliers[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(multipliers[10:], multipliers[11:]))
    assert lr_multiplier(100, 10, 100, 0.2) == pytest.approx(0.2)


def test_training_leaves_no_shared_memory_behind(synth_corpus, tiny_spec, tmp_path, shm_segments, make_config):
    before = shm_segments()
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=3))
    import gc

    gc.collect()
    assert shm_segments() - before == set()


class _DivergedObjective(WeightedLoss):
    """Every sample of domain 'noise' (and, from step 2 on, all samples) has a NaN loss."""

    def compute_gradients(self, model, micro_batches, step, world, autocast, lr):
        result = super().compute_gradients(model, micro_batches, step, world, autocast, lr)
        if step >= 2:
            result.losses[:] = float("nan")
            result.n_finite = 0
            model.zero_grad(set_to_none=True)
        return result


def test_non_finite_steps_are_skipped_then_stop_the_run(synth_corpus, tiny_spec, tmp_path, make_config):
    from mixweight.train.step import MeanWeighting

    config = make_config(synth_corpus, tiny_spec, tmp_path / "run", steps=20, checkpoint_every=2, max_nonfinite_steps=3)
    with pytest.raises(
        MixweightError, match=r"steps 3-5: 3 consecutive steps .* domains with non-finite losses: \[.*'noise'"
    ):
        loop.train(config, objective=_DivergedObjective(MeanWeighting()))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r][:5] == [0, 0, 1, 2]
    # skipped steps changed nothing: the checkpoint after step 4 equals the one after step 2
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    a, b = _params(tmp_path / "run", 2), _params(tmp_path / "run", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
