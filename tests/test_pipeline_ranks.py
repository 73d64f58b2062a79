"""Under torchrun rank 0 alone decides and writes: the lock, refusals, markers and the corpus."""

import os
import subprocess
import sys

import yaml

from mixweight.pipeline import load_pipeline_config
from mixweight.pipeline.build import _data_stage
from mixweight.pipeline.outdir import pipeline_lock
from mixweight.pipeline.stages import MARKER, Stage


def _pipeline(tmp_path, spec):
    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 2048, "seq_len": 32}},
        "train": {"model": spec, "steps": 1, "batch_size": 4, "eval_every": 0, "eval_blocks": 2},
        "arms": {"uniform": {"domain_weights": "uniform"}},
        "seeds": [0],
        "progress": False,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_rank_other_than_0_runs_the_stage_but_writes_no_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    ran = []
    Stage("s", tmp_path / "s", {"a": 1}, {}, 0, lambda: ran.append(1)).run()
    assert ran == [1]
    assert not (tmp_path / "s" / MARKER).exists()


def test_a_rank_other_than_0_does_not_write_the_corpus(tmp_path, tiny_spec, monkeypatch):
    stage, corpus = _data_stage(load_pipeline_config(_pipeline(tmp_path, tiny_spec)), tmp_path / "out")
    monkeypatch.setenv("RANK", "1")
    stage.run()
    assert not (tmp_path / "out" / "corpus" / "data").exists()
    monkeypatch.setenv("RANK", "0")
    stage.run()
    assert (tmp_path / "out" / "corpus" / "data" / "manifest.json").is_file()


def test_a_busy_out_refuses_every_torchrun_rank_with_the_same_error(tmp_path, tiny_spec, free_port):
    out = tmp_path / "out"
    config = _pipeline(tmp_path, tiny_spec)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    with pipeline_lock(out):
        result = subprocess.run(
            [*torchrun, "-m", "mixweight", "pipeline", str(config), "--out", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert sorted(p.name for p in out.iterdir()) == [".pipeline.lock"]  # no rank went on to a stage
    assert not out.exists()  # the holder never wrote: its release leaves nothing either
    # Two processes share stderr, so their lines may run together: split on the prefix, not on newlines.
    errors = [e.splitlines()[0] for e in result.stderr.split("mixweight: error: ")[1:]]
    assert result.returncode != 0
    assert len(errors) == 2 and "another pipeline is running" in errors[0] and errors[0] == errors[1], result.stderr
