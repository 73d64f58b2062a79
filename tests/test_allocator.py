"""glibc malloc thresholds (mixweight/core/allocator.py): fewer page faults per step, the same training bits."""

import json
import os
import subprocess
import sys

import pytest

from mixweight.core import allocator

# A GELU forward and backward on a [2048, 768] activation (gpt2-tiny's MLP at 16 x 128 tokens): the
# allocation pattern of a training step, each temporary 6 MiB. Prints the minor page faults per step.
FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from mixweight.core.allocator import keep_freed_memory
    assert keep_freed_memory()
x = torch.randn(2048, 768, requires_grad=True)
def step():
    y = 0.5 * x * (1.0 + torch.tanh(0.79788 * (x + 0.044715 * torch.pow(x, 3.0))))
    y.sum().backward()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

TRAIN = """
import sys
from mixweight.cli import main
from mixweight.core import allocator
main(sys.argv[1:])
print("applied", allocator._applied)
"""


def _glibc() -> bool:
    return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    return {**env, **extra}


def test_freed_activation_memory_is_reused_instead_of_faulted_in_again():
    faults = {}
    for mode in ("glibc", "keep"):
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=_env())
        if mode == "keep" and not _glibc():
            assert done.returncode != 0  # nothing to set where the C library is not glibc
            return
        assert done.returncode == 0, done.stderr[-2000:]
        faults[mode] = float(done.stdout.strip())
    # measured 2600 faults per step with glibc's defaults, 920 with the thresholds raised
    assert faults["keep"] < faults["glibc"] / 2, faults


def test_training_is_bit_identical_with_and_without_it_and_user_settings_win(synth_corpus, tiny_spec, tmp_path):
    args = ["train", "--data", synth_corpus, "--model", tiny_spec, "--steps", "4", "--batch-size", "8"]
    args += ["--eval-every", "2", "--eval-blocks", "2", "--sample-weighting", "linupper", "--no-progress"]
    runs = {}
    # GLIBC_TUNABLES set (to a no-op) means the user tunes malloc: the trainer then leaves it alone
    for mode, env in (("kept", _env()), ("user", _env(GLIBC_TUNABLES="glibc.malloc.check=0"))):
        out = tmp_path / mode
        done = subprocess.run(
            [sys.executable, "-c", TRAIN, *args, "--out", str(out)], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == f"applied {mode == 'kept' and _glibc()}"
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        for record in records:
            record.pop("time", None)  # wall-clock throughput: the only field that may differ
        runs[mode] = (records, (out / "checkpoints" / "step-4" / "model" / "model.safetensors").read_bytes())
    assert runs["kept"][0] == runs["user"][0] and any("eval" in r for r in runs["kept"][0])
    assert runs["kept"][1] == runs["user"][1]


def test_it_is_set_once_per_process():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    assert first == (_glibc() and not any(name in os.environ for name in allocator.USER_SETTINGS))


@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_a_user_setting_of_glibc_malloc_is_left_alone(name, monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(name, "1")
    assert allocator.keep_freed_memory() is False
