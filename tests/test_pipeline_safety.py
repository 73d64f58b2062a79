"""The pipeline never loses finished work, validates every section first, and stays inside --out.

Every pipeline here is tiny: one arm, a few steps, no DoReMi/DoGE unless the test is about them.
"""

import fcntl
import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from mixweight.core.config import load_config
from mixweight.errors import MixweightError
from mixweight.pipeline import load_pipeline_config, run_pipeline
from mixweight.pipeline.build import build_stages
from mixweight.pipeline.outdir import LOCK_FILE, pipeline_lock
from mixweight.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _config(spec, data=None, steps=3, arms=None, **sections) -> dict:
    config = {
        "data": data or {"synthetic": {"seed": 0, "tokens_per_domain": 2048, "seq_len": 32}},
        "train": {
            "model": spec,
            "steps": steps,
            "batch_size": 4,
            "lr": 3e-3,
            "final_lr": 3e-4,
            "warmup_steps": 1,
            "eval_every": 0,
            "eval_blocks": 2,
            "checkpoint_every": 100,
            "log_every": 1,
        },
        "doremi": None,
        "doge": None,
        "arms": arms or {"uniform": {"domain_weights": "uniform"}},
        "seeds": [0],
        "progress": False,
    }
    config.update(sections)
    return config


def _write(tmp_path, config, name="pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(tmp_path, config, out, **kwargs):
    return run_pipeline(load_pipeline_config(_write(tmp_path, config)), out, **kwargs)


def _tree(root: Path) -> dict[str, int]:
    """Every file under root with its mtime: what a refused command must leave alone (the lock file aside)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != LOCK_FILE
    }


# 10.1: a changed config never deletes finished work -------------------------------------------------------------


def test_raised_steps_continue_every_arm_from_its_last_checkpoint(tmp_path, tiny_spec, capsys):
    out = tmp_path / "out"
    arms = {"uniform": {"domain_weights": "uniform"}, "linupper": {"sample_weighting": "linupper"}}
    _run(tmp_path, _config(tiny_spec, steps=3, arms=arms), out)
    before = {arm: (out / "runs" / f"{arm}-seed0" / "metrics.jsonl").read_bytes() for arm in arms}
    capsys.readouterr()

    _run(tmp_path, _config(tiny_spec, steps=5, arms=arms), out)
    printed = capsys.readouterr().out
    for arm in arms:
        run_dir = out / "runs" / f"{arm}-seed0"
        after = (run_dir / "metrics.jsonl").read_bytes()
        assert after.startswith(before[arm])  # the first 3 steps' lines are byte-identical: nothing was retrained
        steps = [json.loads(line)["step"] for line in after.decode().splitlines() if "eval" not in json.loads(line)]
        assert steps == [1, 2, 3, 4, 5]
        assert json.loads((run_dir / "eval.json").read_text())["step"] == 5
        assert f"arm {arm} (seed 0): continuing in place (steps: 3 -> 5)" in printed
    assert ": cached" in printed  # the data stage
    assert not list((out / "runs").glob("*.replaced-*"))

    capsys.readouterr()
    _run(tmp_path, _config(tiny_spec, steps=5, arms=arms), out)
    assert capsys.readouterr().out.count(": cached") == 3  # data and both arms


def test_a_changed_interval_on_a_finished_arm_trains_nothing(tmp_path, tiny_spec):
    out = tmp_path / "out"
    _run(tmp_path, _config(tiny_spec), out)
    metrics = out / "runs" / "uniform-seed0" / "metrics.jsonl"
    before = metrics.read_bytes()
    config = _config(tiny_spec)
    config["train"]["checkpoint_every"] = 50
    _run(tmp_path, config, out)
    assert metrics.read_bytes() == before


def test_other_changes_stop_naming_the_keys_then_rerun_changed_moves_the_old_run_aside(tmp_path, tiny_spec, capsys):
    out = tmp_path / "out"
    _run(tmp_path, _config(tiny_spec), out)
    assert load_pipeline_config(out / "pipeline.yaml").train["steps"] == 3  # the directory records its config
    old_eval = (out / "runs" / "uniform-seed0" / "eval.json").read_text()
    untouched = _tree(out)

    changed = _config(tiny_spec)
    changed["train"]["lr"] = 1e-2
    with pytest.raises(MixweightError, match=r"arm uniform \(seed 0\) \(lr: 0\.003 -> 0\.01\).*--rerun-changed"):
        _run(tmp_path, changed, out)
    fewer = _config(tiny_spec, steps=2)  # fewer steps than were trained: the run is past them
    with pytest.raises(MixweightError, match=r"steps: 3 -> 2"):
        _run(tmp_path, fewer, out)
    other_data = _config(tiny_spec, data={"synthetic": {"seed": 1, "tokens_per_domain": 2048, "seq_len": 32}})
    with pytest.raises(MixweightError, match=r"data \(seed: 0 -> 1\).*arm uniform \(seed 0\) \(input 'data' changed\)"):
        _run(tmp_path, other_data, out)
    assert _tree(out) == untouched  # refused: nothing written, nothing deleted

    capsys.readouterr()
    _run(tmp_path, changed, out, rerun_changed=True)
    printed = capsys.readouterr().out
    (kept,) = (out / "runs").glob("uniform-seed0.replaced-*-lr")
    assert (kept / "eval.json").read_text() == old_eval
    assert str(kept) in printed
    assert (out / "runs" / "uniform-seed0" / "eval.json").is_file()
    assert len(list(out.glob("pipeline.replaced-*.yaml"))) == 1
    assert load_pipeline_config(out / "pipeline.yaml").train["lr"] == 1e-2


def test_a_changed_weights_section_stops_then_moves_the_old_weights_aside(tmp_path, tiny_spec):
    doremi = {"proxy": tiny_spec, "steps": 2, "reference_steps": 2, "batch_size": 7, "eta": 1.0, "progress": False}
    config = _config(tiny_spec, steps=2, arms={"doremi": {"domain_weights": "doremi"}}, doremi=doremi)
    out = tmp_path / "out"
    _run(tmp_path, config, out)
    old = (out / "weights" / "doremi" / "domain_weights.json").read_text()
    config["doremi"]["eta"] = 0.5
    with pytest.raises(
        MixweightError,
        match=r"weights doremi \(eta: 1\.0 -> 0\.5\); arm doremi \(seed 0\) "
        r"\(input 'doremi' changed\)",
    ):
        _run(tmp_path, config, out)
    _run(tmp_path, config, out, rerun_changed=True)
    (kept,) = (out / "weights").glob("doremi.replaced-*-eta")
    assert (kept / "domain_weights.json").read_text() == old
    assert len(list((out / "runs").glob("doremi-seed0.replaced-*-doremi"))) == 1
    assert (out / "weights" / "doremi" / "domain_weights.json").is_file()


def test_a_directory_the_pipeline_did_not_make_is_never_reused_or_deleted(tmp_path, tiny_spec):
    out = tmp_path / "out"
    foreign = out / "runs" / "uniform-seed0"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MixweightError, match=r"exists and was not written by this command \(it holds runs\)"):
        _run(tmp_path, _config(tiny_spec), out)
    assert (foreign / "notes.txt").read_text() == "mine"


# 10.10: every data form runs; every section is validated first --------------------------------------------------


def _jsonl(path: Path, extra: str = "") -> Path:
    lines = []
    for i in range(60):
        for domain, word in (("prose", "the cat sat on the mat"), ("code", "def f(x): return x + 1")):
            lines.append(json.dumps({"text": f"{word} {i} {extra}" * 4, "meta": {"redpajama_set_name": domain}}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("form", ["synthetic", "prepare", "path"])
def test_each_data_form_runs_end_to_end(tmp_path, tiny_spec, synth_corpus, form):
    data = {
        "synthetic": {"synthetic": {"seed": 0, "tokens_per_domain": 2048, "seq_len": 32}},
        "prepare": {
            "prepare": {
                "input": str(_jsonl(tmp_path / "raw.jsonl")),
                "tokenizer": "byte",
                "seq_len": 32,
                "val_fraction": 0.2,
            }
        },
        "path": {"path": synth_corpus},
    }[form]
    out = tmp_path / "out"
    report = _run(tmp_path, _config(tiny_spec, data=data, steps=2), out)
    assert json.loads((out / "runs" / "uniform-seed0" / "eval.json").read_text())["step"] == 2
    assert "uniform" in report["arms"]
    if form == "prepare":
        assert set(report["arms"]["uniform"]["final"]["domains"]) == {"prose", "code"}


def test_a_changed_input_file_is_a_changed_data_stage(tmp_path, tiny_spec):
    raw = _jsonl(tmp_path / "raw.jsonl")
    data = {"prepare": {"input": str(raw), "tokenizer": "byte", "seq_len": 32, "val_fraction": 0.2}}
    out = tmp_path / "out"
    _run(tmp_path, _config(tiny_spec, data=data, steps=2), out)
    _jsonl(raw, extra="edited")  # same path, new contents
    with pytest.raises(MixweightError, match=r"data \(input_files: .*input 'data' changed"):
        _run(tmp_path, _config(tiny_spec, data=data, steps=2), out)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"prepare": {"inptu": "x.jsonl"}}, r"'data.prepare': unknown key 'inptu'; did you mean 'input'"),
        ({"prepare": {"domain_field": "d"}}, r"'data.prepare': missing required key\(s\) \['input'\]"),
        ({"prepare": {"input": "x", "seq_len": "long"}}, r"'data.prepare': 'seq_len': expected an integer, got 'long'"),
        (
            {"prepare": {"input": "x", "val_fraction": 2}},
            r"'data.prepare': --val-fraction 2(\.0)?: must be in \(0, 1\)",
        ),
        (
            {"prepare": {"input": "x", "val_fraction": 0}},
            r"'data.prepare': --val-fraction 0(\.0)?: must be in \(0, 1\)",
        ),
        ({"synthetic": {"sead": 1}}, r"'data.synthetic': unknown key 'sead'; did you mean 'seed'"),
        ({"synthetic": {"seq_len": 0}}, r"'data.synthetic': --seq-len 0 is too short"),
        ({"synthtic": {}}, r"unknown 'data' form 'synthtic'; did you mean 'synthetic'"),
        ({"path": {"directory": "x"}}, r"'data.path': unknown key 'directory'; did you mean 'dir'"),
        ({"path": 3}, r"'data.path': expected a mapping"),
        ({"synthetic": {}, "path": "x"}, r"'data' needs exactly one of"),
    ],
)
def test_bad_data_sections_are_refused_at_load(tmp_path, data, message):
    with pytest.raises(MixweightError, match=message):
        load_pipeline_config(_write(tmp_path, {"data": data}))


@pytest.mark.parametrize(
    "section, message",
    [
        ({"report": {"baselin": "uniform"}}, r"unknown key 'report.baselin'; did you mean 'report.baseline'"),
        ({"report": {"baseline": "nosuch"}}, r"report baseline 'nosuch' is not an arm"),
        ({"eval": {"lm_evl": {}}}, r"unknown key 'eval.lm_evl'; did you mean 'eval.lm_eval'"),
        (
            {"eval": {"lm_eval": {"tasks": ["x"], "num_fewshots": 5}}},
            r"'eval.lm_eval.num_fewshots'; did you mean 'eval.lm_eval.num_fewshot'",
        ),
        ({"data": {1: {}, "a": {}}}, r"'data' needs exactly one of .*got \[1, 'a'\]"),
        ({"eval": {"lm_eval": {"tasks": "hellaswag"}}}, r"'eval.lm_eval.tasks': expected a list"),
        ({"seeds": ["a"]}, r"'seeds'\[0\]: expected an integer"),
    ],
)
def test_bad_report_eval_and_seed_sections_are_refused_at_load(tmp_path, section, message):
    with pytest.raises(MixweightError, match=message):
        load_pipeline_config(_write(tmp_path, section))


def test_a_doge_target_outside_the_corpus_is_refused_before_any_proxy_trains(tmp_path, tiny_spec):
    short = {"proxy": tiny_spec, "steps": 2, "batch_size": 7, "progress": False}
    config = _config(
        tiny_spec,
        arms={"doremi": {"domain_weights": "doremi"}, "doge": {"domain_weights": "doge"}},
        doremi={**short, "reference_steps": 2},
        doge={**short, "target": "arithmetc"},
    )
    out = tmp_path / "out"
    with pytest.raises(
        MixweightError, match=r"pipeline 'doge'.*'arithmetc' is not a domain.*did you mean 'arithmetic'"
    ):
        _run(tmp_path, config, out)
    assert not (out / "weights").exists()  # DoReMi's proxy (the first stage after the data) never started


def test_an_arm_weights_file_that_does_not_fit_the_corpus_is_refused_before_any_proxy_trains(tmp_path, tiny_spec):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"nosuch": 1.0}}))
    short = {"proxy": tiny_spec, "steps": 2, "batch_size": 7, "progress": False}
    config = _config(
        tiny_spec,
        arms={"doremi": {"domain_weights": "doremi"}, "mine": {"domain_weights": str(weights)}},
        doremi={**short, "reference_steps": 2},
    )
    out = tmp_path / "out"
    with pytest.raises(MixweightError, match=r"arm 'mine'.*nosuch"):
        _run(tmp_path, config, out)
    assert not (out / "weights").exists()


def _is_pipeline_yaml(raw: dict) -> bool:
    return "arms" in raw or isinstance(raw.get("data"), dict)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    raw = yaml.safe_load(path.read_text())
    if _is_pipeline_yaml(raw):
        load_pipeline_config(path)
    else:
        load_config(TrainConfig, path, {})


def test_the_documented_data_forms_load(tmp_path):
    for data in (
        {"synthetic": None},
        {"synthetic": {"seed": 1}},
        {"prepare": {"input": "raw/"}},
        {"path": "corpus/"},
        {"path": {"dir": "corpus/"}},
    ):
        load_pipeline_config(_write(tmp_path, {"data": data}))


def test_slimpajama_recipe_samples_domains_uniformly_for_the_sample_weighting_arms():
    config = load_pipeline_config(REPO / "configs" / "slimpajama-gpt2-mini.yaml")
    for arm in ("uniform", "linupper", "quadratic", "extremes"):
        assert config.arms[arm]["domain_weights"] == "uniform"


# 11.3: arm names stay inside --out --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../victim/runs/uniform",
        "../../../ESCAPED",
        "/tmp/abs",
        "a/b",
        "a\\b",
        ".",
        "..",
        ".hidden",
        "",
        "two words",
        "tab\tname",
        "nl\nname",
        "x" * 101,
    ],
)
def test_arm_names_must_be_one_plain_path_component(tmp_path, name):
    with pytest.raises(MixweightError, match=r"arm name .* becomes the run directory"):
        load_pipeline_config(_write(tmp_path, {"arms": {name: {"domain_weights": "uniform"}}}))


# 11.4: one pipeline per directory; no duplicate YAML keys ----------------------------------------------------------


def test_a_second_pipeline_on_the_same_out_is_refused_naming_the_holder(tmp_path, tiny_spec):
    out = tmp_path / "out"
    with pipeline_lock(out):
        with pytest.raises(
            MixweightError,
            match=rf"another pipeline is running.*pid {os.getpid()} on host "
            rf"{socket.gethostname()}",
        ):
            _run(tmp_path, _config(tiny_spec), out)
        assert not (out / "corpus").exists()
        with (out / LOCK_FILE).open("a") as handle:  # held: not lockable
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not out.exists()  # released, and the holder never wrote: nothing left
    with pipeline_lock(out):  # lockable again
        pass


def test_duplicate_yaml_keys_are_refused_with_file_line_and_key(tmp_path, synth_corpus):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("arms:\n  uniform: {domain_weights: uniform}\n  uniform: {sample_weighting: linupper}\n")
    with pytest.raises(MixweightError, match=rf"{pipeline}: .*line 3: key 'uniform' appears twice.*first at line 2"):
        load_pipeline_config(pipeline)

    train = tmp_path / "t.yaml"
    train.write_text("steps: 3\nlr: 1.0e-3\nsteps: 5\n")
    with pytest.raises(MixweightError, match=rf"{train}: .*line 3: key 'steps' appears twice"):
        load_config(TrainConfig, train, {})

    from mixweight.data.manifest import load_manifest
    from mixweight.sampling.schedule import resolve_schedule

    schedule = tmp_path / "s.yaml"
    schedule.write_text("- start_step: 0\n  weights: {noise: 1.0}\n  start_step: 5\n")
    with pytest.raises(MixweightError, match=r"line 3: key 'start_step' appears twice"):
        resolve_schedule(load_manifest(synth_corpus), str(schedule))


def test_yaml_merge_keys_are_not_duplicates():
    from mixweight.core.yamlio import load_yaml

    assert load_yaml("base: &b {lr: 1, steps: 2}\narm:\n  <<: *b\n  lr: 3\n")["arm"] == {"lr": 3, "steps": 2}


def test_a_pipeline_yaml_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xaa\xe0V(\xac")
    with pytest.raises(MixweightError, match=rf"{path}: not UTF-8 text \(byte 0\)"):
        load_pipeline_config(path)


# checks before writes; stage keys independent of how --out is spelled ---------------------------------------------


def test_rerun_changed_refuses_an_unknown_mixture_before_moving_or_recording_anything(tmp_path, tiny_spec):
    out = tmp_path / "out"
    _run(tmp_path, _config(tiny_spec, steps=1), out)
    before = _tree(out)
    bad = _config(tiny_spec, steps=1, arms={"uniform": {"domain_weights": "nosuchmix"}})
    with pytest.raises(MixweightError, match=r"arm 'uniform'.*nosuchmix"):
        _run(tmp_path, bad, out, rerun_changed=True)
    assert _tree(out) == before  # pipeline.yaml not replaced, the arm's run directory not moved aside
    assert not list(out.glob("pipeline.replaced-*")) and not list((out / "runs").glob("*.replaced-*"))


def test_an_arms_stage_key_does_not_depend_on_how_out_is_spelled(tmp_path, tiny_spec, monkeypatch):
    short = {"proxy": tiny_spec, "steps": 2, "batch_size": 7, "progress": False}
    config = load_pipeline_config(
        _write(
            tmp_path,
            _config(
                tiny_spec,
                arms={"doremi": {"domain_weights": "doremi"}, "doge": {"domain_weights": "doge"}},
                doremi={**short, "reference_steps": 2},
                doge=short,
            ),
        )
    )
    monkeypatch.chdir(tmp_path)
    relative, _, _ = build_stages(config, Path("out"))
    absolute, _, _ = build_stages(config, tmp_path / "out")
    arms = [(r.key, a.key) for r, a in zip(relative, absolute) if r.name.startswith("arm ")]
    assert len(arms) == 2 and all(r == a for r, a in arms)
    assert all(r.values["domain_weights"] in ("doremi", "doge") for r in relative if r.name.startswith("arm "))
