"""The paper's curriculum is the default: r_start for the first 5% of the run, then r; runs made before keep the
schedule they recorded (docs/algorithms.md section 1.6)."""

import pytest
import torch
import yaml

from mixweight.core.config import config_dict
from mixweight.train.config import TrainConfig
from mixweight.train.rundir import config_changes
from mixweight.train.step_weighting import SampleWeightingStep, step_weighting_from_config
from mixweight.weighting import DEFAULT_WARMUP_FRACTION, default_warmup_steps


def _config(**fields) -> TrainConfig:
    config = TrainConfig(data="corpus", out="run", **fields)
    config.validate()
    return config


def test_linupper_starts_near_uniform_for_5_percent_of_the_run():
    config = _config(sample_weighting="linupper", steps=200)
    assert config.sample_weighting.warmup_steps is None and DEFAULT_WARMUP_FRACTION == 0.05
    schedule = step_weighting_from_config(config).weighting.schedule
    assert (schedule.kind, schedule.warmup_steps) == ("step", 10)
    assert schedule.r_at(0) == schedule.r_at(9) == 100.0 and schedule.r_at(10) == 0.4
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0])
    early = step_weighting_from_config(config).weights(losses, torch.zeros(4, dtype=torch.long), step=0)
    late = step_weighting_from_config(config).weights(losses, torch.zeros(4, dtype=torch.long), step=10)
    assert early.max() / early.min() < 1.03 < late.max() / late.min()  # e^(1/100) at most, then up to e^(1/0.4)


@pytest.mark.parametrize("steps, warmup", [(7, 0), (10, 0), (30, 2), (20000, 1000)])
def test_the_default_length_is_a_rounded_fraction_of_the_steps(steps, warmup):
    assert default_warmup_steps(steps) == warmup


def test_an_explicit_length_wins_and_zero_is_the_old_default():
    assert step_weighting_from_config(_config(sample_weighting=NO_WARMUP)).weighting.schedule.r_at(0) == 0.4
    three = {"name": "linupper", "warmup_steps": 3}
    schedule = step_weighting_from_config(_config(sample_weighting=three)).weighting.schedule
    assert (schedule.r_at(2), schedule.r_at(3)) == (100.0, 0.4)
    assert isinstance(step_weighting_from_config(_config(sample_weighting="linupper")), SampleWeightingStep)


NO_WARMUP = {"name": "linupper", "warmup_steps": 0}


def _saved(run_dir, **flat):
    """A config.yaml as 0.1 wrote it: the flat keys of before the blocks (sample_weighting a name)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in config_dict(_config()).items() if k not in ("sample_weighting", "mixing")}
    before = {"sample_weighting": "none", "r": 0.4, "r_schedule": "step", "r_start": 100.0, "r_warmup_steps": None}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**values, **before, **flat}))
    return run_dir


def _without(run_dir, key):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved[key]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    return run_dir


def test_a_run_recorded_before_keeps_its_schedule_on_resume(tmp_path):
    linupper = _saved(tmp_path / "a", sample_weighting="linupper", r_warmup_steps=0)
    changed = "sample_weighting.warmup_steps: 0 -> None"
    assert config_changes(linupper, _config(sample_weighting="linupper"), inputs={}) == changed
    assert config_changes(linupper, _config(sample_weighting=NO_WARMUP), inputs={}) == ""
    # a config.yaml older than the key: the run had the default of then, 0, not today's
    older = _without(_saved(tmp_path / "b", sample_weighting="linupper"), "r_warmup_steps")
    assert config_changes(older, _config(sample_weighting="linupper"), inputs={}) == changed
    assert config_changes(older, _config(sample_weighting=NO_WARMUP), inputs={}) == ""


def test_schedule_keys_are_not_compared_between_two_plain_mean_runs(tmp_path):
    plain = _saved(tmp_path / "a", sample_weighting="none", r_warmup_steps=0, r=0.7)
    assert config_changes(plain, _config(), inputs={}) == ""
    assert config_changes(_without(plain, "r_warmup_steps"), _config(), inputs={}) == ""
    # but a run that turns sample weighting on is another run
    changes = config_changes(plain, _config(sample_weighting="linupper"), inputs={})
    assert changes.startswith("sample_weighting.name: 'none' -> 'linupper', sample_weighting.r: 0.7 -> 0.4")


def test_the_hf_trainer_takes_5_percent_of_its_max_steps(synth_corpus, tiny_spec, tmp_path):
    from transformers import TrainingArguments

    from mixweight.core.model import build_model
    from mixweight.data.manifest import load_manifest
    from mixweight.hf import ReweightingTrainer

    model = build_model(tiny_spec, load_manifest(synth_corpus), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, report_to=[], use_cpu=True)
    trainer = ReweightingTrainer(model=model, args=args, sample_weighting="linupper")
    trainer.state.max_steps = 40  # what train() sets before the first step
    trainer.compute_loss(model, {"input_ids": torch.randint(0, 256, (4, 16))})
    assert trainer.sample_weighting.schedule.warmup_steps == 2
    assert trainer.last_weights.max() / trainer.last_weights.min() < 1.03  # step 0: r = 100
