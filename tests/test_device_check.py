"""benchmarks/device_check.py cannot rot: its CPU dry run runs every part, and its bookkeeping is checked.

The dry run uses the same code path as the GPU check (one process per part, `mixweight train` through the
CLI, transformers.Trainer, proxy_cost.py's arms), at tiny sizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dc = _load()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device-check")
    out = tmp / "check.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--cpu",
            "--out",
            str(out),
            "--work-dir",
            str(tmp / "work"),
            "--markdown",
            str(tmp / "check.md"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), (tmp / "check.md").read_text(), done.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_dry_run_records_every_part(dry_run):
    result, _, _ = dry_run
    assert result["schema"] == dc.SCHEMA and result["mode"] == "cpu"
    assert {"config", "flags", "parts", "summary", "model", "device", "wall_s"} <= set(result)
    assert set(result["parts"]) == set(dc.PARTS)
    help_text = subprocess.run(
        [sys.executable, "-m", "mixweight", "train", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    flags = dc.train_flags(help_text)
    assert {k: result["flags"][k] for k in flags} == flags
    optional = {"loss_full": flags["loss_impl"], "loss_chunked": flags["loss_impl"], "compile": flags["compile"]}
    for name, part in result["parts"].items():
        expected = "ok" if optional.get(name, True) else "not available"
        assert part["status"] == expected, (name, part)


def test_dry_run_numbers_are_finite_and_positive(dry_run):
    result, _, _ = dry_run
    for key in ("parameters", "matmul_parameters", "flops_per_token", "attention_flops_per_token"):
        assert _positive(result["model"][key]), key
    assert result["model"]["vocab_size"] == 50257  # the widened corpus: GPT-2's vocabulary
    train_parts = [
        n
        for n in ("mixweight", "transformers", "linupper", "loss_full", "loss_chunked", "compile")
        if result["parts"][n]["status"] == "ok"
    ]
    assert {"mixweight", "transformers", "linupper"} <= set(train_parts)
    for name in train_parts:
        res = result["parts"][name]["result"]
        for key in ("tokens_per_s", "peak_memory_bytes", "wall_s", "loss"):
            assert _positive(res[key]), (name, key, res.get(key))
        assert res["peak_memory_kind"] == "cpu_max_rss" and res["mfu"] is None  # no peak FLOPs for a CPU
    for arm in ("plain", "doremi", "doge"):
        values = result["parts"]["proxy_steps"]["result"]["arms"][arm]
        assert _positive(values["ms_per_step"]) and _positive(values["vs_plain"]), arm
    summary = result["summary"]
    expected = ["mixweight_vs_transformers_tokens_per_s", "linupper_overhead", "doremi_vs_plain", "doge_vs_plain"]
    if result["flags"]["loss_impl"]:
        expected += ["full_loss_vs_transformers_tokens_per_s", "chunked_vs_full_peak_memory", "chunked_vs_full_time"]
    if result["flags"]["compile"]:
        expected += ["compile_speedup"]
    for key in expected:
        assert _positive(summary[key]), key
    assert summary["mfu_mixweight"] is None and "not in" in result["device"]["peak_note"]


def test_dry_run_prints_the_results_tables(dry_run):
    _, table, stdout = dry_run
    assert table in stdout
    for row in (
        "| mixweight train (plain) |",
        "| transformers.Trainer |",
        "| DoGE proxy step |",
        "| mixweight_vs_transformers_tokens_per_s |",
    ):
        assert row in table


def test_peak_flops_table():
    assert dc.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert dc.peak_bf16_flops("NVIDIA H200") == 989e12
    assert dc.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert dc.peak_bf16_flops("NVIDIA L4") == 121e12
    for other in ("NVIDIA H100 PCIe", "NVIDIA L40S", "Tesla T4", "cpu", None):
        assert dc.peak_bf16_flops(other) is None, other


def test_flops_per_token_of_gpt2_mini(tmp_path):
    """6N + 12*L*H*Q*T for the 124M GPT-2 at T=512: N excludes the 1024x768 position embedding only (tied)."""
    from mixweight.data.synthetic import write_synthetic_corpus

    write_synthetic_corpus(tmp_path / "c", seed=0, tokens_per_domain=2048, seq_len=512)
    manifest = tmp_path / "c" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["vocab_size"] = 50257
    manifest.write_text(json.dumps(raw))
    flops = dc.model_flops("gpt2-mini", tmp_path / "c")
    assert flops["parameters"] == 124_439_808
    assert flops["matmul_parameters"] == 124_439_808 - 1024 * 768
    assert flops["attention_flops_per_token"] == 12 * 12 * 12 * 64 * 512
    assert flops["flops_per_token"] == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 12 * 64 * 512


def test_train_flags_detection():
    assert dc.train_flags("  --loss-impl LOSS_IMPL  ...\n  --compile   wrap") == {"loss_impl": True, "compile": True}
    assert dc.train_flags("  --compile-mode X\n  --no-loss-impl") == {"loss_impl": False, "compile": False}


def test_a_failing_or_slow_part_is_recorded_not_raised():
    failed = dc.run_part([sys.executable, "-c", "import sys; print('partial'); sys.exit('boom in the part')"], 60)
    assert failed["status"] == "failed" and "boom in the part" in failed["error"]
    slow = dc.run_part([sys.executable, "-c", "import time; time.sleep(120)"], 2)
    assert slow["status"] == "timeout" and "budget" in slow["error"]


def test_foreign_out_and_work_dir_are_refused(tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("not the check's")
    for extra in (["--out", str(foreign)], ["--out", str(tmp_path / "new.json"), "--work-dir", str(work)]):
        done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", *extra], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2 and "device_check: error:" in done.stderr, done.stderr
    assert foreign.read_text() == '{"mine": 1}' and (work / "keep.txt").exists()
    assert not (tmp_path / "new.json").exists()
