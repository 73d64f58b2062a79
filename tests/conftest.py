"""Shared fixtures: a small synthetic corpus and a tiny model spec, built once per session.

Nothing is downloaded: every corpus and model here is made from code.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

# A 2-layer, 32-dim GPT-2: trains a step in milliseconds on a CPU.
TINY_SPEC = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("specs") / "tiny.json"
    path.write_text(json.dumps(TINY_SPEC))
    return str(path)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> str:
    from mixweight.data.synthetic import write_synthetic_corpus

    out = tmp_path_factory.mktemp("corpus") / "synth"
    write_synthetic_corpus(out, seed=0, tokens_per_domain=8192, seq_len=64)
    return str(out)


@pytest.fixture(scope="session")
def train_config():
    """A function building a validated TrainConfig: `train_config(corpus, spec, out, **fields)`.

    Each test file wraps it with its own defaults (a `make_config` fixture).
    """
    from mixweight.train.config import TrainConfig

    def build(corpus, spec, out, **fields):
        config = TrainConfig(data=corpus, out=str(out), model=spec, **fields)
        config.validate()
        return config

    return build


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port on 127.0.0.1 that is free now (for torchrun's --master_port)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def float64_mixweight() -> list[str]:
    """`python tests/scripts/float64_mixweight.py`: mixweight with float64 models (EXACT_ATOL, test_train_weighting)."""
    return [sys.executable, str(Path(__file__).parent / "scripts" / "float64_mixweight.py")]


@pytest.fixture
def shm_segments():
    """A function listing the shared-memory segments in /dev/shm (mosaicml-streaming's live there)."""
    return lambda: set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture
def crash_at_step():
    """`with crash_at_step(n): ...` makes optimizer step n raise KeyboardInterrupt (a run killed mid-training),
    then restores the real step. `objective`: the StepObjective class whose compute_gradients is patched
    (default WeightedLoss, the plain and DoReMi step; DoGEObjective for DoGE); `when(objective)`: crash only
    that objective's step (a DoReMi proxy, not its reference run); `message`: the interrupt's text."""

    @contextmanager
    def crashing(step: int, objective=None, when=None, message: str = "simulated crash"):
        if objective is None:
            from mixweight.train.objective import WeightedLoss as objective
        real_step, own = objective.compute_gradients, "compute_gradients" in vars(objective)

        def crash(self, model, micro_batches, at, *args):
            if at == step and (when is None or when(self)):
                raise KeyboardInterrupt(message)
            return real_step(self, model, micro_batches, at, *args)

        objective.compute_gradients = crash
        try:
            yield
        finally:
            if own:
                objective.compute_gradients = real_step
            else:
                del objective.compute_gradients  # inherited: the base class's step again

    return crashing


@pytest.fixture
def cli_refuses(capsys):
    """Run `mixweight ARGV` in process; it must exit 2 with exactly one `mixweight: error:` line, returned."""
    from mixweight.cli import main

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        assert exit_info.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("mixweight: error: "), err
        return err[0]

    return run


@pytest.fixture
def three_step_linupper_run(synth_corpus, tiny_spec, tmp_path, free_port):
    """A function running 3 steps of chunked-loss LinUpper `mixweight train` in a subprocess; returns the step-3
    parameters. `entry` is the interpreter and script (or `-m mixweight`), `processes` 2 launches it under torchrun."""
    import subprocess

    from safetensors.torch import load_file

    def run(entry: list[str], out: str, batch: int, processes: int = 1, flags=()) -> dict:
        python, *script = entry
        launcher = []
        if processes > 1:
            launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
        args = f"--steps 3 --batch-size {batch} --lr 3e-3 --warmup-steps 1 --eval-every 0 --eval-blocks 2"
        args += " --sample-weighting linupper --loss-impl chunked --no-progress"
        command = [python, *launcher, *script, "train", "--data", synth_corpus, "--model", tiny_spec]
        command += ["--out", str(tmp_path / out), *args.split(), *flags]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return load_file(str(tmp_path / out / "checkpoints" / "step-3" / "model" / "model.safetensors"))

    return run
