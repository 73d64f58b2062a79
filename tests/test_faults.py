"""Crashes for real: kill -9 a training process, mid-run and mid-checkpoint, then resume."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mixweight.train.checkpoint import latest_checkpoint, list_checkpoints

STEPS = 120


def _train_args(corpus, spec, out, *extra):
    return [
        sys.executable,
        "-m",
        "mixweight",
        "train",
        "--data",
        corpus,
        "--model",
        spec,
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--eval-every",
        "40",
        "--eval-blocks",
        "4",
        "--checkpoint-every",
        "20",
        "--log-every",
        "5",
        "--no-progress",
        *extra,
    ]


def _params(run_dir):
    return load_file(str(run_dir / "checkpoints" / f"step-{STEPS}" / "model" / "model.safetensors"))


def _metrics(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time", None)
    return records


def _assert_same_run(a: Path, b: Path):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert _metrics(a) == _metrics(b)
    assert json.loads((a / "eval.json").read_text()) == json.loads((b / "eval.json").read_text())


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(synth_corpus, tiny_spec, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_args(synth_corpus, tiny_spec, straight), check=True, capture_output=True)

    process = subprocess.Popen(
        _train_args(synth_corpus, tiny_spec, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-40").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # it really died mid-run, not after finishing
    assert latest_checkpoint(killed).name != f"step-{STEPS}"

    subprocess.run(_train_args(synth_corpus, tiny_spec, killed, "--resume"), check=True, capture_output=True)
    _assert_same_run(straight, killed)


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import mixweight.train.checkpoint as ckpt
    from mixweight.cli import main

    real = ckpt._fsync_tree
    def die_while_saving_step_40(path):
        real(path)  # everything of step-40 is written into the temporary directory ...
        if ".step-40." in path.name:
            os.kill(os.getpid(), signal.SIGKILL)  # ... but never renamed into place
    ckpt._fsync_tree = die_while_saving_step_40
    main(sys.argv[1:])
""")


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint(synth_corpus, tiny_spec, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_args(synth_corpus, tiny_spec, straight), check=True, capture_output=True)
    args = _train_args(synth_corpus, tiny_spec, killed)
    done = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args[3:]], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    root = killed / "checkpoints"
    assert [step for step, _ in list_checkpoints(killed)] == [20]  # keep_checkpoints=2 kept 20; 40 never landed
    assert any(p.name.startswith(".step-40.") for p in root.iterdir())  # the half-written one is hidden
    assert latest_checkpoint(killed).name == "step-20"

    subprocess.run(_train_args(synth_corpus, tiny_spec, killed, "--resume"), check=True, capture_output=True)
    assert not any(p.name.startswith(".step-") for p in root.iterdir())  # cleaned up on the next save
    _assert_same_run(straight, killed)


def test_kill_9_before_the_first_checkpoint_then_rerun_writes_each_step_once(synth_corpus, tiny_spec, tmp_path):
    run = tmp_path / "run"
    args = _train_args(synth_corpus, tiny_spec, run, "--checkpoint-every", "1000", "--log-every", "1")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while (
        process.poll() is None
        and time.time() < deadline
        and (not metrics.is_file() or metrics.read_text().count("\n") < 3)
    ):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL and list_checkpoints(run) == []
    # the killed process's lock died with it; the rerun starts at step 0 and replaces the old records
    done = subprocess.run([*args, "--steps", "4"], capture_output=True, text=True, check=True)
    assert "replacing metrics.jsonl" in done.stdout
    steps = [r["step"] for r in _metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4]
