"""The `mixweight` command end to end, as a user runs it (a separate process each time)."""

import json
import subprocess
import sys

import pytest
import yaml

from mixweight.cli import main


def run_cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "mixweight", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"mixweight {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_synth_train_eval_from_the_command_line(tmp_path, tiny_spec):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    run_cli("data", "synth", "--out", str(corpus), "--tokens-per-domain", "4096", "--seq-len", "64")
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": str(corpus),
                "model": tiny_spec,
                "steps": 6,
                "batch_size": 4,
                "eval_blocks": 4,
                "checkpoint_every": 3,
            }
        )
    )
    run_cli("train", "--config", str(config), "--out", str(run), "--steps", "6")
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["steps"] == 6 and resolved["batch_size"] == 4 and resolved["out"] == str(run)
    assert (run / "checkpoints" / "step-6" / "model" / "config.json").is_file()
    evaluated = json.loads(run_cli("eval", str(run)).stdout)
    assert evaluated["step"] == 6
    assert evaluated["average_loss"] == pytest.approx(json.loads((run / "eval.json").read_text())["average_loss"])
    earlier = json.loads(run_cli("eval", str(run), "--checkpoint", "step-3").stdout)
    assert earlier["step"] == 3 and (run / "eval" / "step-3.json").is_file()


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("stepz: 5\n", "unknown key 'stepz'; did you mean 'steps'?"),
        ("steps: many\n", "'steps': expected an integer, got 'many'"),
        ("steps: 0\n", "'steps' must be a positive integer"),
        ("batch_size: -2\n", "'batch_size' must be a positive integer"),
        ("lr: 0\n", "'lr' must be > 0"),
        ("sample_weighting: {histogram_every: 0}\n", "'sample_weighting.histogram_every' must be a positive integer"),
        ("resume: maybe\n", "'resume': expected true or false"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_values_get_clear_errors(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written for a refused config


def test_missing_corpus_says_how_to_make_one(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    assert "mixweight data synth" in capsys.readouterr().err


@pytest.mark.parametrize("item", ["doremi", "=w.json"])
def test_compare_weights_needs_method_equals_file(tmp_path, capsys, item):
    """A --weights entry without METHOD= is named (it was a ValueError traceback from dict())."""
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path), "--out", str(tmp_path / "report"), "--weights", item])
    assert exit_info.value.code == 2
    assert f"--weights {item!r}: expected METHOD=FILE" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
