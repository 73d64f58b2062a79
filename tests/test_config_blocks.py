"""TrainConfig's typed blocks: `sample_weighting: {...}` and `mixing: {...}` in every form the docs show (YAML block,
shorthand, --BLOCK.KEY flags, a pipeline's train section merged with an arm), the flat keys of 0.1 read for a release
with one deprecation line and hidden from --help, a proxy refusing the whole blocks, and a run or pipeline stage
written in the flat spelling continuing as the same run."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import ClassVar, Optional

import pytest
import yaml

from mixweight.cli import build_parser, main
from mixweight.cli.flags import overrides
from mixweight.core.config import (
    config_dict,
    held_deprecations,
    load_config,
    merge_values,
    rename_keys,
    to_yaml,
    with_values,
)
from mixweight.errors import MixweightError
from mixweight.train.config import RENAMED, TrainConfig, saved_config_values
from mixweight.train.rundir import config_changes

# every flat key of 0.1 with a value of its type, and the block spelling it moved to
FLAT = {
    "r": 0.25,
    "r_schedule": "cosine",
    "r_warmup_steps": 7,
    "r_start": 50.0,
    "weight_cap": 2.0,
    "weighting_scope": "micro_batch",
    "weight_histogram_every": 5,
    "mixing_every": 4,
    "mixing_prior": "natural",
    "odm_reward": "exp3",
    "odm_alpha": 0.5,
    "odm_exploration": 0.05,
    "doremi_eta": 0.02,
    "doremi_smoothing": 0.1,
    "doremi_exploration": 0.2,
}
BLOCKS = {
    "sample_weighting": {
        "name": "linupper",
        "r": 0.25,
        "schedule": "cosine",
        "warmup_steps": 7,
        "start": 50.0,
        "cap": 2.0,
        "scope": "micro_batch",
        "histogram_every": 5,
    },
    "mixing": {
        "every": 4,
        "prior": "natural",
        "odm": {"reward": "exp3", "alpha": 0.5, "exploration": 0.05},
        "doremi": {"eta": 0.02, "smoothing": 0.1, "exploration": 0.2},
    },
}
BASE = {"data": "corpus", "out": "run", "domain_weights": "online:odm", "mixing": {"every": 3}}


def _config(values):
    return load_config(TrainConfig, None, values, "train")


def _flags(values: dict, prefix: str = "") -> list[str]:
    argv = []
    for key, value in values.items():
        if isinstance(value, dict):
            argv += _flags(value, f"{prefix}{key}.")
        elif key == "name":  # the shorthand flag takes the block's name: --sample-weighting linupper
            argv += [f"--{prefix[:-1].replace('_', '-')}", str(value)]
        else:
            argv += [f"--{(prefix + key).replace('_', '-')}", str(value)]
    return argv


def _from_flags(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return _config(overrides(args, TrainConfig))


def test_the_yaml_blocks_and_their_flags_make_the_same_config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**BASE, **BLOCKS}))
    from_yaml = load_config(TrainConfig, path, {})
    from_flags = _from_flags(_flags({**BASE, **BLOCKS}))
    assert from_yaml == from_flags
    assert from_yaml.sample_weighting.scope == "micro_batch" and from_yaml.mixing.options("odm").reward == "exp3"
    # config.yaml holds the blocks, and reads back as the same config
    assert load_config(TrainConfig, None, yaml.safe_load(to_yaml(from_yaml))) == from_yaml
    dashed = tmp_path / "dashed.yaml"  # dashes read as underscores inside a block as at the top level
    dashed.write_text(yaml.safe_dump({**BASE, "sample-weighting": {"name": "linupper", "warmup-steps": 0}}))
    assert load_config(TrainConfig, dashed, {}).sample_weighting.warmup_steps == 0


def test_a_bare_name_is_the_sample_weighting_shorthand_and_a_flag_key_merges_into_the_yaml_block(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("sample_weighting: {r: 0.2, warmup_steps: 0}\n")
    config = load_config(TrainConfig, path, {"sample_weighting": "LinUpper", "data": "c", "out": "o"})
    assert (config.sample_weighting.name, config.sample_weighting.r, config.sample_weighting.warmup_steps) == (
        "linupper",
        0.2,
        0,
    )
    flags = _from_flags(["--data", "c", "--out", "o", "--sample-weighting", "quadratic", "--sample-weighting.r", "0.3"])
    assert (flags.sample_weighting.name, flags.sample_weighting.r) == ("quadratic", 0.3)
    assert TrainConfig(sample_weighting="extremes").sample_weighting.name == "extremes"  # the Python spelling


@dataclasses.dataclass
class _Kinded:  # a block whose shorthand is not `name`
    SHORTHAND: ClassVar[str] = "kind"
    kind: str = "a"
    size: int = 1


@dataclasses.dataclass
class _Plain:  # a block with no shorthand
    size: int = 1


@dataclasses.dataclass
class _Outer:
    RENAMED_KEYS: ClassVar[dict] = {"old_size": "kinded.size"}
    kinded: _Kinded = dataclasses.field(default_factory=_Kinded)
    plain: Optional[_Plain] = None


def test_a_bare_value_over_a_block_is_that_block_class_s_shorthand_key():
    merged = merge_values({"kinded": {"size": 2}, "plain": {"size": 2}}, {"kinded": "b", "plain": "x"}, _Outer)
    assert merged == {"kinded": {"size": 2, "kind": "b"}, "plain": "x"}  # no shorthand: the bare value replaces
    assert merge_values({"kinded": "b"}, {"kinded": {"size": 3}}, _Outer) == {"kinded": {"kind": "b", "size": 3}}
    assert rename_keys(_Outer, {"kinded": "b", "old_size": 3}, "t", quiet=True) == {"kinded": {"kind": "b", "size": 3}}
    with pytest.raises(MixweightError, match="'plain' must be a mapping to hold 'old'"):
        rename_keys(type("_O", (), {"RENAMED_KEYS": {"old": "plain.size"}}), {"plain": "x", "old": 3}, "t", quiet=True)


@pytest.mark.parametrize("old", sorted(FLAT))
def test_every_flat_key_of_before_is_read_once_with_one_deprecation_line(old, capsys):
    new = RENAMED[old]
    value = FLAT[old]
    base = {**BASE, "sample_weighting": "linupper"}
    if new == "mixing.every":  # the key itself, given once
        base.pop("mixing")
    values = {**base, old: value}
    with held_deprecations():
        flat = _config(values)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("mixweight: deprecated:") and f"{old} -> {new}" in err[0]
    nested: dict = {}
    target = nested
    *blocks, last = new.split(".")
    for block in blocks:
        target = target.setdefault(block, {})
    target[last] = value
    assert flat == _config(merge_values(base, nested, TrainConfig))
    # the flag of before: the same config
    with held_deprecations():
        assert _from_flags([*_flags(base), *_flags({old: value})]) == flat
    with pytest.raises(MixweightError, match=f"'{old}' \\(deprecated\\) and '{new}' both given"):
        _config(merge_values({**base, old: value}, nested, TrainConfig))


def test_help_shows_one_spelling_per_option_and_no_flat_key_of_before(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    for old in RENAMED:
        assert f"--{old.replace('_', '-')} " not in shown and f"--{old.replace('_', '-')}\n" not in shown, old
    for new in ("--sample-weighting.r", "--sample-weighting.warmup-steps", "--mixing.every", "--mixing.odm.reward"):
        assert shown.count(f"{new} ") >= 1, new


def test_the_temperature_alias_and_r_both_given_are_refused(capsys):
    with pytest.raises(MixweightError, match="both given"):
        _config({**BASE, "r": 0.3, "temperature": 0.3})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sample_weighting": {"name": "linuper"}}, "'sample_weighting.name' 'linuper' is not a sample weighting"),
        ({"sample_weighting": {"r": 0}}, "'sample_weighting.r' must be > 0"),
        ({"sample_weighting": {"rr": 1}}, "unknown key 'sample_weighting.rr'; did you mean 'sample_weighting.r'"),
        ({"sample_weighting": 3.5}, "'sample_weighting': expected a name or a mapping of SampleWeightingConfig keys"),
        ({"sample_weighting": [1]}, "'sample_weighting': expected a name or a mapping"),
        ({"mixing": {"odm": {"alpha": 1.5}}}, "'mixing.odm.alpha' must be in [0, 1)"),
        ({"mixing": {"odm": {"alfa": 0.5}}}, "unknown key 'mixing.odm.alfa'; did you mean 'mixing.odm.alpha'"),
        ({"mixing": {"adm": {}}}, "unknown key 'mixing.adm'; did you mean 'mixing.odm'"),
        ({"mixing": {"every": "x"}}, "'mixing.every': expected an integer"),
    ],
)
def test_a_bad_block_value_is_one_line_naming_the_dotted_key(values, message):
    with pytest.raises(MixweightError) as error:
        _config({**BASE, **values})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_proxy_refuses_the_whole_blocks_in_either_spelling(cli_refuses, tmp_path):
    base = ["weights", "doremi", "--data", "synthetic", "--out", str(tmp_path / "w.json")]
    line = cli_refuses([*base, "--train.sample-weighting", "linupper"])
    assert "'train.sample_weighting' cannot be set here" in line
    line = cli_refuses([*base, "--train.sample-weighting.r", "0.2"])
    assert "'train.sample_weighting' cannot be set here" in line
    line = cli_refuses([*base, "--train.mixing-every", "5"])
    assert "'train.mixing_every' (now 'train.mixing.every') cannot be set here" in line
    config = tmp_path / "doremi.yaml"
    config.write_text(yaml.safe_dump({"train": {"r": 0.2}}))
    line = cli_refuses([*base, "--config", config])
    assert "'train.r' (now 'train.sample_weighting.r') cannot be set here" in line
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "w.work").exists()


def test_a_run_saved_in_the_flat_spelling_is_the_same_run(tmp_path):
    config = with_values(
        TrainConfig(data="c", out=str(tmp_path), sample_weighting="linupper"),
        {"sample_weighting.r": 0.3, "sample_weighting.warmup_steps": 0},
    )
    flat = {k: v for k, v in config_dict(config).items() if k not in ("sample_weighting", "mixing")}
    flat.update({"sample_weighting": "linupper", "r": 0.3, "r_schedule": "step", "r_start": 100.0})
    flat.update({"weight_cap": None, "weighting_scope": "step", "mixing_every": 0, "odm_alpha": 0.9})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(flat))  # r_warmup_steps absent: 0, as before 0.2
    assert config_changes(tmp_path, config, inputs={}) == ""
    changed = with_values(config, {"sample_weighting.r": 0.5})
    assert config_changes(tmp_path, changed, inputs={}) == "sample_weighting.r: 0.3 -> 0.5"
    assert saved_config_values(flat, "config.yaml")["sample_weighting"]["name"] == "linupper"


def test_a_pipeline_arm_merges_its_blocks_over_the_train_sections(tmp_path, capsys):
    from mixweight.pipeline.config import pipeline_config

    values = {
        "train": {"steps": 10, "sample_weighting": {"r": 0.3}, "mixing": {"odm": {"reward": "exp3"}}},
        "arms": {
            "u": {"domain_weights": "uniform"},
            "lin": {"domain_weights": "uniform", "sample_weighting": "linupper"},
            "odm": {"domain_weights": "online:odm", "mixing": {"every": 5}},
        },
        "doremi": None,
        "doge": None,
        "regmix": None,
    }
    config = pipeline_config(values, "p.yaml")
    config.validate()
    lin, odm = config.arm_config("lin"), config.arm_config("odm")
    assert (lin.sample_weighting.name, lin.sample_weighting.r) == ("linupper", 0.3)
    assert (odm.mixing.every, odm.mixing.options("odm").reward) == (5, "exp3")
    assert config.arm_config("u").sample_weighting.name == "none"
    assert "deprecated" not in capsys.readouterr().err


def test_a_stage_marker_of_the_flat_spelling_is_the_same_stage(tmp_path):
    from mixweight.pipeline.stages import DONE, MARKER, stage_key

    stage, _ = _stages(tmp_path, {"domain_weights": "uniform", "sample_weighting": "linupper"})
    old_values = {"seed": 0, "steps": 10, "r": 0.3, "domain_weights": "uniform", "sample_weighting": "linupper"}
    stage.directory.mkdir(parents=True)
    marker = {"key": stage_key(old_values, stage.inputs), "values": old_values, "inputs": stage.inputs}
    (stage.directory / MARKER).write_text(json.dumps({**marker, "finished": True}))
    assert stage.plan().state == DONE
    marker["values"] = {**old_values, "r": 0.5}  # another value of before: another stage
    marker["key"] = stage_key(marker["values"], stage.inputs)
    (stage.directory / MARKER).write_text(json.dumps({**marker, "finished": True}))
    plan = stage.plan()
    assert plan.state != DONE and any("sample_weighting" in change for change in plan.changes)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _old_keys_in(values) -> set[str]:
    """The flat keys of before anywhere in a YAML mapping (a pipeline's train section, an arm, a train config)."""
    if isinstance(values, dict):  # inside a block its own keys are today's (sample_weighting: {r: 0.4})
        inner = [v for k, v in values.items() if k not in ("sample_weighting", "mixing")]
        return {k for k in values if k in RENAMED} | set().union(*(_old_keys_in(v) for v in inner))
    return set()


def test_every_shipped_config_and_docs_example_uses_the_block_spelling(capsys):
    from mixweight.pipeline import load_pipeline_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert not _old_keys_in(yaml.safe_load(path.read_text())), path.name
        if "arms" in path.read_text():
            load_pipeline_config(path).validate()
        else:
            load_config(TrainConfig, path, {})
        assert "deprecated" not in capsys.readouterr().err, path.name
    old_flags = {f"--{old.replace('_', '-')}" for old in RENAMED}
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S):  # every YAML example
            assert not _old_keys_in(yaml.safe_load(block)), (path.name, block)
        for line in text.splitlines():  # every command line shown; a line about the old spellings names them
            if ("mixweight " in line or "torchrun " in line) and "deprecated" not in line:
                shown = set(re.findall(r"--[a-z][a-z0-9-]*(?![a-z0-9.-])", line))
                assert not shown & old_flags, (path.name, line)


def test_a_flag_overrides_the_yaml_in_either_spelling(tmp_path, capsys):
    flat, block = tmp_path / "flat.yaml", tmp_path / "block.yaml"
    flat.write_text("data: c\nout: o\nr: 0.3\n")
    block.write_text("data: c\nout: o\nsample_weighting: {r: 0.3}\n")
    with held_deprecations():
        assert load_config(TrainConfig, flat, {"sample_weighting": {"r": 0.5}}).sample_weighting.r == 0.5
        assert load_config(TrainConfig, block, {"r": 0.6}).sample_weighting.r == 0.6
    with pytest.raises(MixweightError, match="both given"):  # within one source, two spellings are refused
        load_config(TrainConfig, None, {"r": 0.6, "sample_weighting": {"r": 0.5}})


def _stages(tmp_path, arm: dict, lm_eval: bool = False):
    from mixweight.pipeline.build import _arm_stage, _downstream_stage
    from mixweight.pipeline.config import pipeline_config

    values = {
        "train": {"steps": 10, "sample_weighting": {"r": 0.3}},
        "arms": {"lin": arm},
        "doremi": None,
        "doge": None,
        "regmix": None,
    }
    config = pipeline_config(values, "p.yaml")
    config.validate()
    stage = _arm_stage(config, "lin", 0, "corpus", {"data": "abc"}, tmp_path)
    options = {"tasks": ["t"], "num_fewshot": 0, "include_path": None, "limit": None, "batch_size": 1}
    return stage, _downstream_stage(options, stage)


def test_two_spellings_of_one_arm_are_one_stage(tmp_path):
    first, _ = _stages(tmp_path, {"domain_weights": "uniform", "sample_weighting": "linupper"})
    second, _ = _stages(tmp_path, {"domain_weights": "uniform", "sample_weighting": {"name": "LinUpper", "r": 0.3}})
    assert first.key == second.key
    other, _ = _stages(tmp_path, {"domain_weights": "uniform", "sample_weighting": {"name": "linupper", "r": 0.5}})
    assert other.key != first.key


def test_a_downstream_stage_of_before_stays_cached_with_its_arm(tmp_path):
    from mixweight.pipeline.build import _trajectory
    from mixweight.pipeline.stages import DONE, MARKER, stage_key

    arm, downstream = _stages(tmp_path, {"domain_weights": "uniform", "sample_weighting": "linupper"})
    then = {"seed": 0, "steps": 10, "r": 0.3, "domain_weights": "uniform", "sample_weighting": "linupper"}
    arm.directory.mkdir(parents=True)
    marker = {"key": stage_key(then, arm.inputs), "values": then, "inputs": arm.inputs, "finished": True}
    (arm.directory / MARKER).write_text(json.dumps(marker))
    old_inputs = {"arm": _trajectory(then, arm.inputs)}
    downstream.directory.mkdir(parents=True)
    values = downstream.values
    marker = {"key": stage_key(values, old_inputs), "values": values, "inputs": old_inputs, "finished": True}
    (downstream.directory / MARKER).write_text(json.dumps(marker))
    assert arm.plan().state == DONE and downstream.plan().state == DONE
    old_inputs["arm"] = "0" * 16  # another trajectory of before: not this arm's
    marker = {"key": stage_key(values, old_inputs), "values": values, "inputs": old_inputs, "finished": True}
    (downstream.directory / MARKER).write_text(json.dumps(marker))
    assert downstream.plan().state != DONE


def test_a_pipeline_record_of_the_flat_spelling_is_the_same_config(tmp_path, capsys):
    from mixweight.pipeline.config import pipeline_config
    from mixweight.pipeline.outdir import CONFIG_FILE, _config_text, record_config

    values = {"train": {"steps": 10, "sample_weighting": {"r": 0.3}}, "arms": {"lin": {"sample_weighting": "linupper"}}}
    config = pipeline_config({**values, "doremi": None, "doge": None, "regmix": None}, "p.yaml")
    then = yaml.safe_load(_config_text(config))
    then["train"] = {"steps": 10, "r": 0.3}  # what a 0.1 pipeline recorded for the same config
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(then, sort_keys=False))
    record_config(config, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE] and "differs" not in capsys.readouterr().out
    assert (tmp_path / CONFIG_FILE).read_text() == _config_text(config)  # rewritten in today's spelling
    then["train"] = {"steps": 10, "r": 0.5}  # another config of before: kept beside the new record
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(then, sort_keys=False))
    record_config(config, tmp_path)
    assert len(list(tmp_path.glob("pipeline.replaced-*.yaml"))) == 1 and "sections: train" in capsys.readouterr().out


def test_a_pipeline_record_with_a_method_key_of_before_is_the_same_config(tmp_path, capsys):
    from mixweight.pipeline.config import pipeline_config
    from mixweight.pipeline.outdir import CONFIG_FILE, _config_text, record_config

    arms = {"u": {"domain_weights": "uniform"}, "d": {"domain_weights": "doremi"}}
    config = pipeline_config({"train": {"steps": 10}, "arms": arms, "doremi": {}, "doge": None, "regmix": None}, "p")
    then = yaml.safe_load(_config_text(config))
    then["doremi"]["objective"] = then["doremi"].pop("proxy_loss")  # DoReMi's key of before
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(then, sort_keys=False))
    record_config(config, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE] and "differs" not in capsys.readouterr().out


def test_an_empty_shorthand_beside_a_key_of_before_is_still_refused():
    with held_deprecations(), pytest.raises(MixweightError, match="is not a sample weighting"):
        _config({**BASE, "sample_weighting": "", "r": 0.3})


def test_the_block_class_of_a_method_s_train_overrides_is_train_config():
    from mixweight.core.blocks import block_class
    from mixweight.domain.doremi_run import DoReMiConfig

    assert block_class(DoReMiConfig, "train") is TrainConfig
    assert block_class(TrainConfig, "sample_weighting").SHORTHAND == "name"
    assert block_class(TrainConfig, "steps") is None
