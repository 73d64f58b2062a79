"""DoReMi as users run it: `mixweight weights doremi` under torchrun, and killed with -9 mid-proxy."""

import json
import signal
import subprocess
import sys
import time

import pytest

from mixweight.domain.methods import verify_file

MIXWEIGHT = [sys.executable, "-m", "mixweight"]


def _args(corpus, spec, out, batch, *extra):
    """`mixweight` arguments (after `-m mixweight` or the float64 script)."""
    return [
        "weights",
        "doremi",
        "--data",
        corpus,
        "--out",
        str(out),
        "--proxy",
        spec,
        "--steps",
        "40",
        "--reference-steps",
        "20",
        "--batch-size",
        str(batch),
        "--lr",
        "3e-3",
        "--final-lr",
        "3e-4",
        "--warmup-steps",
        "2",
        "--log-every",
        "5",
        "--checkpoint-every",
        "10",
        "--no-progress",
        *extra,
    ]


def _weights(path):
    return json.loads(path.read_text())


def _run(command):
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.distributed
def test_two_processes_give_the_weights_of_one(synth_corpus, tiny_spec, tmp_path, float64_mixweight):
    # float64 models: 1 and 2 processes sum in other orders, which Adam amplifies in float32 by a CPU-dependent
    # amount (EXACT_ATOL in test_train_weighting.py); in float64 the weights and signals came out equal
    python, script = float64_mixweight
    _run([python, script, *_args(synth_corpus, tiny_spec, tmp_path / "one.json", 16)])
    torchrun = [python, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547"]
    _run([*torchrun, script, *_args(synth_corpus, tiny_spec, tmp_path / "two.json", 8)])
    one, two = _weights(tmp_path / "one.json"), _weights(tmp_path / "two.json")
    assert one["domains"] == two["domains"]
    assert max(abs(a - b) for a, b in zip(one["weights"], two["weights"])) < 1e-9
    assert max(one["weights"]) - min(one["weights"]) > 0.05  # and they are not trivially uniform
    for a, b in zip(one["trajectory"], two["trajectory"]):
        assert a["step"] == b["step"]
        assert max(abs(x - y) for x, y in zip(a["signal"], b["signal"])) < 1e-9
    # every rank holds the global per-step signals: the 2-process artifact replays alone
    assert two["replay"]["steps"] == 40 and "replayed 40 doremi steps" in verify_file(tmp_path / "two.json")


def test_kill_9_during_the_proxy_then_rerun_gives_the_same_weights(synth_corpus, tiny_spec, tmp_path):
    _run([*MIXWEIGHT, *_args(synth_corpus, tiny_spec, tmp_path / "straight.json", 16)])
    out = tmp_path / "killed.json"
    proxy_checkpoints = tmp_path / "killed.work" / "round-0" / "proxy" / "checkpoints"
    process = subprocess.Popen(
        [*MIXWEIGHT, *_args(synth_corpus, tiny_spec, out, 16)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (proxy_checkpoints / "step-20").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL and not out.exists()  # died mid-proxy, before writing weights

    _run([*MIXWEIGHT, *_args(synth_corpus, tiny_spec, out, 16)])  # the same command resumes
    straight, resumed = _weights(tmp_path / "straight.json"), _weights(out)
    assert resumed["weights"] == straight["weights"] and resumed["trajectory"] == straight["trajectory"]
    # the per-step record survives the checkpoint: the resumed artifact replays alone, like the straight one
    assert resumed["replay"] == straight["replay"] and len(resumed["replay"]["signals"]) == 40
    assert "replayed 40 doremi steps" in verify_file(out)
