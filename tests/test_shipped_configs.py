"""configs/train-quickstart.yaml runs as shipped; the shipped pipeline configs use the nested weights form.

The pipeline configs are not run here (a full pipeline is minutes of proxy and arm training): they are loaded
and validated in test_pipeline.py::test_shipped_pipeline_configs_load_and_validate, and the pipeline they
describe runs in miniature in test_pipeline.py::test_miniature_pipeline_end_to_end_then_cached_then_one_arm_rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mixweight.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train-quickstart.yaml"


def test_the_shipped_train_config_trains_on_the_built_in_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXWEIGHT_CACHE", str(tmp_path / "cache"))  # the built-in corpus is written here, not in ~
    out = tmp_path / "run"
    # Only the length and the output place are shortened; every other key is the file's.
    main(["train", "--config", str(CONFIG), "--out", str(out), *"--steps 2 --eval-every 0 --eval-blocks 2".split()])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    shipped = yaml.safe_load(CONFIG.read_text())
    kept = [k for k in shipped if k not in ("out", "steps", "eval_every")]
    assert {k: saved[k] for k in kept} == {k: shipped[k] for k in kept}
    assert json.loads((out / "eval.json").read_text())["step"] == 2
    assert any((tmp_path / "cache").rglob("manifest.json"))


def test_the_shipped_pipeline_configs_use_the_nested_weights_form(capsys):
    from mixweight.pipeline import load_pipeline_config

    for name in ("quickstart.yaml", "quickstart-full.yaml", "slimpajama-gpt2-mini.yaml"):
        config = load_pipeline_config(CONFIG.with_name(name))
        # the proxies' train keys sit in their train block
        assert config.section("doremi").train and config.section("doge").train, name
        assert "deprecated" not in capsys.readouterr().err, name


def test_the_quickstart_and_its_full_size_differ_only_in_size():
    """The README's main job and quickstart-full.yaml run the same arms, methods, corpus and optimizer; only
    lengths, intervals, proxy models and the RegMix budget that follows the arms' length differ."""
    small, full = (yaml.safe_load(CONFIG.with_name(n).read_text()) for n in ("quickstart.yaml", "quickstart-full.yaml"))
    sizes = {
        "train": {"steps", "warmup_steps", "eval_every", "checkpoint_every"},
        "doremi": {"proxy"},
        "doge": {"proxy"},
        "regmix": {"token_budget"},
    }
    assert small.keys() == full.keys()
    for section in small:
        keep = sizes.get(section, set())
        if isinstance(small[section], dict):
            assert {k: v for k, v in small[section].items() if k not in keep} == {
                k: v for k, v in full[section].items() if k not in keep
            }, section
        else:
            assert small[section] == full[section], section
    train = small["train"]
    assert (
        small["regmix"]["token_budget"] == train["steps"] * train["batch_size"] * small["data"]["synthetic"]["seq_len"]
    )
    assert full["regmix"]["token_budget"] == full["train"]["steps"] * train["batch_size"] * 128
    assert train["steps"] < full["train"]["steps"]
    assert train["warmup_steps"] / train["steps"] == full["train"]["warmup_steps"] / full["train"]["steps"]
