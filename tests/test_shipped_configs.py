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

    for name in ("quickstart.yaml", "slimpajama-gpt2-mini.yaml"):
        config = load_pipeline_config(CONFIG.with_name(name))
        # the proxies' train keys sit in their train block
        assert config.section("doremi").train and config.section("doge").train, name
        assert "deprecated" not in capsys.readouterr().err, name
