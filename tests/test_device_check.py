"""benchmarks/device_check (the package device_check.sh runs) cannot rot: its CPU dry run runs every part, its
bookkeeping is checked, and what it measures is asked of the code (TrainConfig's fields), not of `--help`.

The dry run uses the same code path as the GPU check (device_check.sh, one process per part, `mixweight train`
through the CLI with each arm's YAML config, transformers.Trainer, proxy_cost.py's arms), at tiny sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Optional, Union

import pytest
import yaml

from mixweight.core.config import nested

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is this checkout's, not an installed package

from benchmarks.device_check import cli, driver, features, flops, plan, report  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device-check")
    out, work = tmp / "check.json", tmp / "work"
    # The documented entry point; python3 on PATH is this interpreter (used when the checkout has no .venv).
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--cpu", "--out", str(out), "--work-dir", str(work)]
        + ["--markdown", str(tmp / "check.md")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), (tmp / "check.md").read_text(), done.stdout, work


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _get(mapping: dict, dotted: str):
    for key in dotted.split("."):
        mapping = mapping[key]
    return mapping


def test_dry_run_runs_every_part_with_its_setting(dry_run):
    result, _, _, work = dry_run
    assert result["schema"] == plan.SCHEMA and result["mode"] == "cpu"
    assert {"config", "flags", "parts", "summary", "model", "device", "wall_s"} <= set(result)
    assert result["flags"] == {feature: True for feature in features.FEATURES}  # this checkout has them all
    assert list(result["parts"]) == plan.PARTS
    for name, part in result["parts"].items():
        assert part["status"] == "ok", (name, part)
    for name, (kind, settings) in plan.TRAIN_ARMS.items():
        if kind != "mixweight":
            continue
        # The run's own resolved config.yaml holds the arm's setting: it reached TrainConfig under its key.
        resolved = yaml.safe_load((work / name / "config.yaml").read_text())
        recorded = result["parts"][name]["result"]["train_config"]
        for feature, value in settings.items():
            assert _get(resolved, features.FEATURES[feature]) == value, (name, feature)
            assert _get(recorded, features.FEATURES[feature]) == value, (name, feature)


def test_dry_run_numbers_are_finite_and_positive(dry_run):
    result, _, _, _ = dry_run
    for key in ("parameters", "matmul_parameters", "flops_per_token", "attention_flops_per_token"):
        assert _positive(result["model"][key]), key
    assert result["model"]["vocab_size"] == 50257  # the widened corpus: GPT-2's vocabulary
    for name in plan.TRAIN_ARMS:
        res = result["parts"][name]["result"]
        for key in ("tokens_per_s", "peak_memory_bytes", "wall_s", "loss"):
            assert _positive(res[key]), (name, key, res.get(key))
        assert res["peak_memory_kind"] == "cpu_max_rss" and res["mfu"] is None  # no peak FLOPs for a CPU
    for arm in ("plain", "doremi", "doge"):
        values = result["parts"]["proxy_steps"]["result"]["arms"][arm]
        assert _positive(values["ms_per_step"]) and _positive(values["vs_plain"]), arm
    summary = result["summary"]
    for key, value in summary.items():
        if key.startswith("mfu_"):
            assert value is None, key
        else:
            assert _positive(value), key
    assert "not in" in result["device"]["peak_note"]


def test_dry_run_prints_the_results_tables(dry_run):
    _, table, stdout, _ = dry_run
    assert table in stdout
    for row in (
        "| mixweight train (plain) |",
        "| transformers.Trainer |",
        "| mixweight train, sample_weighting.name: linupper |",
        "| mixweight train, loss_impl: chunked |",
        "| mixweight train, compile: true |",
        "| DoGE proxy step |",
        "| mixweight_vs_transformers_tokens_per_s |",
    ):
        assert row in table


# ---------------------------------------------------------------- what exists is asked of the code


@dataclasses.dataclass
class _Block:
    name: str = "none"
    r: float = 0.4


@dataclasses.dataclass
class _Outer:
    plain: int = 0
    typed: _Block = dataclasses.field(default_factory=_Block)
    optional: Optional[_Block] = None
    shorthand: Union[str, _Block] = "none"
    block: dict = nested(_Block, "a block of overrides")


def test_has_key_reads_fields_and_nested_blocks():
    for key in ("plain", "typed.name", "optional.r", "shorthand.name", "block.r"):
        assert features.has_key(_Outer, key), key
    for key in ("missing", "plain.name", "typed.missing", "block.name.deeper", "r"):
        assert not features.has_key(_Outer, key), key


def test_every_feature_is_a_key_of_this_trainconfig():
    """A renamed or moved TrainConfig field fails here: adapt its one line in features.FEATURES."""
    from mixweight.train.config import TrainConfig

    for feature, key in features.FEATURES.items():
        assert features.has_key(TrainConfig, key), (feature, key)
    assert features.present() == {feature: True for feature in features.FEATURES}


def _without(cls, *names):
    """`cls` as a dataclass lacking the fields `names` (types resolved, defaults and metadata kept)."""
    hints = typing.get_type_hints(cls)
    kept = [
        (
            f.name,
            hints[f.name],
            dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(cls)
        if f.name not in names
    ]
    return dataclasses.make_dataclass(cls.__name__, kept)


def _check(tmp_path, monkeypatch):
    """A Check whose workers are recorded, not run: (check, the calls)."""
    args = cli.parser().parse_args(["--cpu", "--out", str(tmp_path / "c.json"), "--work-dir", str(tmp_path / "w")])
    check, calls = driver.Check(args), []
    monkeypatch.setattr(check, "worker", lambda name, kind, **spec: calls.append((name, kind, spec)))
    return check, calls


def test_an_arm_whose_field_trainconfig_lacks_reports_itself_unavailable(tmp_path, monkeypatch):
    import mixweight.train.config as train_config

    monkeypatch.setattr(train_config, "TrainConfig", _without(train_config.TrainConfig, "loss_impl", "compile"))
    check, calls = _check(tmp_path, monkeypatch)
    check.detect()
    check.measure()
    assert check.result["flags"] == {"sample_weighting": True, "loss_impl": False, "compile": False}
    assert [name for name, _, _ in calls] == ["mixweight", "transformers", "linupper", "proxy_steps"]
    for name, key in (("loss_full", "'loss_impl'"), ("loss_chunked", "'loss_impl'"), ("compile", "'compile'")):
        part = check.result["parts"][name]
        assert part["status"] == "not available" and f"TrainConfig has no key {key}" in part["error"], part
    written = json.loads((tmp_path / "c.json").read_text())  # recorded in the JSON as it happens
    assert written["parts"]["compile"]["status"] == "not available"
    check.summarize()
    assert check.result["summary"]["compile_speedup"] is None
    assert "| mixweight train, compile: true | - | - | - | - | - | not available:" in report.markdown(check.result)


def _config_class(sample_weighting_type):
    """A TrainConfig stand-in holding the three features, sample_weighting of the given type."""
    default = dataclasses.field(default_factory=_Block) if sample_weighting_type is _Block else "none"
    fields = [
        ("sample_weighting", sample_weighting_type, default),
        ("loss_impl", str, "auto"),
        ("compile", bool, False),
    ]
    return dataclasses.make_dataclass("TrainConfig", fields)


def test_a_key_moved_into_a_block_is_one_line_to_adapt(tmp_path, monkeypatch):
    """The feature's dotted key nests the arm's setting in its block; a config without the block refuses it."""
    import mixweight.train.config as train_config

    monkeypatch.setitem(features.FEATURES, "sample_weighting", "sample_weighting.name")
    settings = plan.TRAIN_ARMS["linupper"][1]
    config = plan.train_config(plan.PROFILES["cpu"], tmp_path / "c", tmp_path / "r", "fp32", settings)
    assert config["sample_weighting"]["name"] == "linupper" and config["steps"] == plan.PROFILES["cpu"]["steps"]
    assert report.arm_label("linupper") == "mixweight train, sample_weighting.name: linupper"

    monkeypatch.setattr(train_config, "TrainConfig", _config_class(_Block))  # the block exists: the arm runs
    check, calls = _check(tmp_path / "nested", monkeypatch)
    check.detect()
    check.measure()
    assert check.result["flags"] == {"sample_weighting": True, "loss_impl": True, "compile": True}
    arm = next(spec for name, _, spec in calls if name == "linupper")
    assert arm["train_config"]["sample_weighting"]["name"] == "linupper"

    monkeypatch.setattr(train_config, "TrainConfig", _config_class(str))  # a flat field has no key "name"
    check, calls = _check(tmp_path / "flat", monkeypatch)
    check.detect()
    check.measure()
    assert check.result["flags"]["sample_weighting"] is False
    assert "no key 'sample_weighting.name'" in check.result["parts"]["linupper"]["error"]
    assert "linupper" not in [name for name, _, _ in calls]


# ---------------------------------------------------------------- the pure parts and the bookkeeping


def test_peak_flops_table():
    assert flops.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_bf16_flops("NVIDIA H200") == 989e12
    assert flops.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_bf16_flops("NVIDIA L4") == 121e12
    for other in ("NVIDIA H100 PCIe", "NVIDIA L40S", "Tesla T4", "cpu", None):
        assert flops.peak_bf16_flops(other) is None, other


def test_flops_per_token_of_gpt2_mini(tmp_path):
    """6N + 12*L*H*Q*T for the 124M GPT-2 at T=512: N excludes the 1024x768 position embedding only (tied)."""
    from mixweight.data.synthetic import write_synthetic_corpus

    write_synthetic_corpus(tmp_path / "c", seed=0, tokens_per_domain=2048, seq_len=512)
    manifest = tmp_path / "c" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["vocab_size"] = 50257
    manifest.write_text(json.dumps(raw))
    result = flops.model_flops("gpt2-mini", tmp_path / "c")
    assert result["parameters"] == 124_439_808
    assert result["matmul_parameters"] == 124_439_808 - 1024 * 768
    assert result["attention_flops_per_token"] == 12 * 12 * 12 * 64 * 512
    assert result["flops_per_token"] == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 12 * 64 * 512


def test_a_failing_or_slow_part_is_recorded_not_raised():
    failed = driver.run_part([sys.executable, "-c", "import sys; print('partial'); sys.exit('boom in the part')"], 60)
    assert failed["status"] == "failed" and "boom in the part" in failed["error"]
    slow = driver.run_part([sys.executable, "-c", "import time; time.sleep(120)"], 2)
    assert slow["status"] == "timeout" and "budget" in slow["error"]


def test_foreign_out_and_work_dir_are_refused(tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("not the check's")
    for extra in (["--out", str(foreign)], ["--out", str(tmp_path / "new.json"), "--work-dir", str(work)]):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.device_check", "--cpu", *extra], capture_output=True, text=True, cwd=REPO
        )
        assert done.returncode == 2 and "device_check: error:" in done.stderr, done.stderr
    assert foreign.read_text() == '{"mine": 1}' and (work / "keep.txt").exists()
    assert not (tmp_path / "new.json").exists()
