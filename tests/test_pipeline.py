"""The main job in miniature: every stage, the report, caching and partial reruns."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from mixweight.errors import MixweightError
from mixweight.pipeline import load_pipeline_config, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def _pipeline_yaml(tmp_path, spec, linupper_r=0.4) -> Path:
    short = {"lr": 3e-3, "final_lr": 3e-4, "warmup_steps": 1, "batch_size": 14, "progress": False}
    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {
            "model": spec,
            "steps": 6,
            "batch_size": 8,
            "lr": 3e-3,
            "final_lr": 3e-4,
            "warmup_steps": 1,
            "eval_every": 3,
            "eval_blocks": 4,
            "checkpoint_every": 100,
        },
        "doremi": {"proxy": spec, "steps": 6, "reference_steps": 6, "log_every": 2, "train": short},  # nested form
        "doge": {"proxy": spec, "steps": 4, "log_every": 2, **short},  # the flat form: deprecated, still read
        "arms": {
            "uniform": {"domain_weights": "uniform"},
            "linupper": {"domain_weights": "uniform", "sample_weighting": {"name": "linupper", "r": linupper_r}},
            "doremi": {"domain_weights": "doremi"},
            "doge+linupper": {"domain_weights": "doge", "sample_weighting": "linupper"},
        },
        "seeds": [0],
        "progress": False,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _eval_mtimes(out: Path) -> dict[str, int]:
    return {
        p.parent.name: p.stat().st_mtime_ns
        for p in (out / "runs").glob("*/eval.json")
        if ".replaced-" not in p.parent.name
    }


def test_miniature_pipeline_end_to_end_then_cached_then_one_arm_rerun(tmp_path, tiny_spec, capsys):
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(_pipeline_yaml(tmp_path, tiny_spec)), out)

    markdown = (out / "report" / "report.md").read_text()
    for figure in ["validation_curves.png", "domain_weights.png", "sample_weights.png"]:
        assert f"({figure})" in markdown and (out / "report" / figure).stat().st_size > 0
    assert (out / "weights" / "doremi" / "domain_weights.json").is_file()
    assert (out / "weights" / "doge" / "domain_weights.json").is_file()
    written = json.loads((out / "report" / "report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert set(_eval_mtimes(out)) == {"uniform-seed0", "linupper-seed0", "doremi-seed0", "doge+linupper-seed0"}
    for arm in ["uniform", "doremi"]:  # the report's numbers are the runs' own
        run_eval = json.loads((out / "runs" / f"{arm}-seed0" / "eval.json").read_text())
        final = written["arms"][arm]["final"]
        for domain, stats in run_eval["domains"].items():
            assert final["domains"][domain]["loss"]["mean"] == pytest.approx(stats["loss"], abs=1e-12)

    capsys.readouterr()
    before = _eval_mtimes(out)
    # showing progress bars changes nothing a stage computes: still all cached
    run_pipeline(dataclasses.replace(load_pipeline_config(_pipeline_yaml(tmp_path, tiny_spec)), progress=True), out)
    printed = capsys.readouterr().out
    assert printed.count(": cached") == 4 + 3  # data, doremi, doge and the four arms
    assert _eval_mtimes(out) == before

    changed = load_pipeline_config(_pipeline_yaml(tmp_path, tiny_spec, linupper_r=0.8))
    with pytest.raises(MixweightError, match=r"arm linupper \(seed 0\) \(sample_weighting.r: 0.4 -> 0.8\)"):
        run_pipeline(changed, out)  # a changed arm is never replaced silently
    assert _eval_mtimes(out) == before
    run_pipeline(changed, out, rerun_changed=True)
    assert len(list((out / "runs").glob("linupper-seed0.replaced-*-sample_weighting_r"))) == 1  # the old run, kept
    after = _eval_mtimes(out)
    assert after["linupper-seed0"] != before["linupper-seed0"]
    assert {k: v for k, v in after.items() if k != "linupper-seed0"} == {
        k: v for k, v in before.items() if k != "linupper-seed0"
    }


@pytest.mark.parametrize(
    "name", ["quickstart.yaml", "quickstart-full.yaml", "slimpajama-gpt2-mini.yaml", "compare-seeds.yaml"]
)
def test_shipped_pipeline_configs_load_and_validate(name):
    config = load_pipeline_config(REPO / "configs" / name)
    assert {"uniform", "linupper", "doremi", "doremi+linupper", "doge", "doge+linupper"} <= set(config.arms)


def test_every_section_is_typed_when_the_yaml_is_read_with_no_placeholder_paths(tmp_path):
    from mixweight.pipeline.config import LmEvalSection, ReportSection
    from mixweight.train.config import TrainConfig

    path = tmp_path / "p.yaml"
    arms = {
        "u": {"domain_weights": "uniform"},
        "d": {"domain_weights": "doremi", "seed": 7},
        "o": {"domain_weights": "online:doremi", "mixing": {"every": 2}},
    }
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"steps": 3, "sample_weighting": "LinUpper"},
                "arms": arms,
                "report": {"baseline": "u"},
                "eval": {"lm_eval": {"tasks": ["t"]}},
            }
        )
    )
    config = load_pipeline_config(path)
    assert isinstance(config.report, ReportSection) and config.report.baseline == "u"
    assert isinstance(config.eval.lm_eval, LmEvalSection) and config.eval.lm_eval.num_fewshot == 5
    assert config.arms == arms  # the keys as written: what a stage's key hashes
    doremi_arm = config.arm_config("d")
    assert type(doremi_arm) is TrainConfig and doremi_arm.data is None and doremi_arm.out is None
    assert (doremi_arm.domain_weights, doremi_arm.seed, doremi_arm.steps) == ("doremi", 7, 3)  # resolved by its stage
    assert doremi_arm.sample_weighting.name == "linupper"
    assert (
        config.arm_config("o").mixing.options("doremi").reference is None
    )  # the doremi stage's reference run, set by the arm's stage
    assert dataclasses.replace(config, progress=False).arm_config("u") == config.arm_config("u")


def test_pipeline_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    with pytest.raises(MixweightError, match="unknown key 'stepz'; did you mean 'steps'"):
        load_pipeline_config(bad)
    bad.write_text(yaml.safe_dump({"doremi": None, "arms": {"x": {"domain_weights": "doremi"}}}))
    with pytest.raises(MixweightError, match="arm 'x' uses domain_weights 'doremi'"):
        load_pipeline_config(bad)
    bad.write_text(yaml.safe_dump({"train": {"out": "somewhere"}}))
    with pytest.raises(MixweightError, match="'out' is set by the pipeline"):
        load_pipeline_config(bad)


def test_weights_sections_are_typed_and_read_in_nested_or_flat_form(tmp_path, capsys):
    from mixweight.domain.doremi_run import DoReMiConfig
    from mixweight.pipeline.config import section_key

    path = tmp_path / "p.yaml"
    nested = {"eta": 0.5, "train": {"lr": 2e-3, "batch_size": 28}}
    path.write_text(yaml.safe_dump({"doremi": nested}))
    from_nested = load_pipeline_config(path)
    assert "deprecated" not in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"doremi": {"eta": 0.5, "lr": 2e-3, "batch_size": 28}}))
    from_flat = load_pipeline_config(path)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert line.startswith("mixweight: deprecated:") and "'doremi'" in line and "train.lr" in line
    assert isinstance(from_nested.section("doremi"), DoReMiConfig) and from_nested.section(
        "doremi"
    ) == from_flat.section("doremi")
    assert from_nested.section("doremi").train == {"lr": 2e-3, "batch_size": 28}
    key = section_key(from_nested.section("doremi"))
    assert key == section_key(from_flat.section("doremi")) and key["eta"] == 0.5 and key["train"] == nested["train"]
    assert "data" not in key and "work_dir" not in key  # the pipeline sets them


@pytest.mark.parametrize(
    "section, message",
    [
        ({"train": {"weight_decy": 0.0}}, r"unknown key 'train.weight_decy'; did you mean 'weight_decay'\?"),
        ({"etaa": 1.0}, r"unknown key 'etaa'; did you mean 'eta'\?"),
        ({"train": {"lr": -1.0}}, r"weights doremi: the proxy's train block: 'lr' must be > 0"),
        ({"lr": 1e-3, "train": {"lr": 2e-3}}, r"'lr' \(--lr, deprecated\) and 'train.lr' \(--train.lr\) both given"),
        ({"work_dir": "x"}, r"pipeline 'doremi': 'work_dir' is set by the pipeline; remove it"),
        ({"train": {"out": "x"}}, r"'train.out' cannot be set here"),
    ],
)
def test_weights_section_errors_name_the_key(tmp_path, section, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"doremi": section}))
    with pytest.raises(MixweightError, match=message):
        load_pipeline_config(path)
