"""What commands write when the input is hostile but the command may run, or when the disk is.

- `eval` of another corpus or another run's checkpoint writes a file of its own, never the run's
  eval.json or eval/step-N.json; `eval` of a run that is training is refused (its lock); `eval` of an
  unfinished run does not make it look finished.
- Shard bytes edited in place (the same size) are found: by their hash (a small corpus), by their
  size and modification time pinned in inputs.json (any corpus) on --resume.
- A pipeline checks every arm's model against the corpus before any weights stage trains.
- A TensorBoard directory that cannot be written drops the tracker with one warning.
- A full disk or a read-only filesystem (an injected OSError, and a real tmpfs where one can be mounted)
  ends every writing command in one line; what was there before stays, and a run resumes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixweight.train.loop import train
from mixweight.train.rundir import RunLock
from tests.sandbox import assert_refused, changes, failing_writes, listing, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(synth_corpus, tiny_spec, tmp_path_factory, train_config) -> Path:
    run = tmp_path_factory.mktemp("outputs") / "run"
    fields = dict(steps=2, batch_size=4, warmup_steps=1, eval_every=0, eval_blocks=2, checkpoint_every=1, log_every=1)
    train(train_config(synth_corpus, tiny_spec, run, progress=False, **fields))
    return run


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory) -> str:
    from mixweight.data.synthetic import write_synthetic_corpus

    out = tmp_path_factory.mktemp("other") / "other"
    write_synthetic_corpus(out, seed=1, tokens_per_domain=2048, seq_len=64)
    return str(out)


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(finished_run), str(run)))
    return run


def _train_argv(corpus, spec, out, *extra) -> list:
    flags = "--steps 2 --batch-size 4 --warmup-steps 1 --eval-every 0 --eval-blocks 2 --checkpoint-every 1"
    return ["train", "--data", corpus, "--model", spec, "--out", out, *flags.split(), "--no-progress", *extra]


# --- eval -----------------------------------------------------------------------------------------------------------
def test_eval_of_another_corpus_or_checkpoint_writes_a_file_of_its_own(run_copy, finished_run, other_corpus):
    own = {name: (run_copy / name).read_bytes() for name in ("eval.json", "metrics.jsonl")}
    before = listing(run_copy)
    outcome = run_cli(["eval", run_copy, "--data", other_corpus])
    assert outcome.code == 0, outcome.err
    written = Path(json.loads(outcome.out)["written"])
    assert written.parent == run_copy / "eval" and written.name.startswith("step-2.on-other-"), written
    other = run_cli(["eval", run_copy, "--checkpoint", finished_run / "checkpoints" / "step-2"])
    assert other.code == 0, other.err
    foreign = Path(json.loads(other.out)["written"])
    assert foreign.name.startswith("step-2.run-") and foreign != written
    assert {name: (run_copy / name).read_bytes() for name in own} == own  # the run's own results untouched
    assert changes(before, listing(run_copy), ok=[written, foreign, run_copy / ".lock"]) in (
        [],
        [f"added {written.parent}"],
    )
    assert json.loads(written.read_text())["data"] == other_corpus  # it says what it evaluated


def test_eval_of_the_runs_own_final_checkpoint_rewrites_its_own_files(run_copy):
    outcome = run_cli(["eval", run_copy])
    assert outcome.code == 0, outcome.err
    assert Path(json.loads(outcome.out)["written"]) == run_copy / "eval" / "step-2.json"
    assert json.loads((run_copy / "eval.json").read_text())["step"] == 2


def test_eval_of_a_run_that_is_training_is_refused(run_copy):
    holder = RunLock(run_copy)
    holder.acquire()  # a trainer holds the run (flock is per open file: this process conflicts with itself too)
    try:
        before = listing(run_copy)
        line = assert_refused(run_cli(["eval", run_copy]))
        assert "another mixweight process is writing this run" in line
        assert changes(before, listing(run_copy)) == []
    finally:
        holder.release()


def test_eval_of_an_unfinished_run_does_not_make_it_look_finished(run_copy):
    (run_copy / "eval.json").unlink()
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("steps: 2\n", "steps: 9\n"))  # it was to train 9 steps
    outcome = run_cli(["eval", run_copy])
    assert outcome.code == 0, outcome.err
    assert (run_copy / "eval" / "step-2.json").is_file() and not (run_copy / "eval.json").exists()


# --- 10: shard bytes edited in place --------------------------------------------------------------------------------
def _flip_a_byte(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a token id of the last block: same size, another value
    shard.write_bytes(bytes(data))


def test_a_shard_edited_in_place_is_found_by_its_hash(synth_corpus, tiny_spec, tmp_path, cli_refuses):
    corpus = shutil.copytree(synth_corpus, tmp_path / "corpus")
    _flip_a_byte(corpus / "train" / "noise" / "shard.00000.mds")
    line = cli_refuses(_train_argv(corpus, tiny_spec, tmp_path / "run"))
    assert "shard.00000.mds does not match the hash its index records (xxh3_64)" in line
    assert not (tmp_path / "run").exists()


def test_a_shard_edited_in_place_is_a_config_change_on_resume(synth_corpus, tiny_spec, tmp_path, monkeypatch):
    corpus = shutil.copytree(synth_corpus, tmp_path / "corpus")
    assert run_cli(_train_argv(corpus, tiny_spec, tmp_path / "run")).code == 0
    monkeypatch.setattr("mixweight.data.streams.CHEAP_HASH_BYTES", 0)  # a big corpus: its training shards not hashed
    _flip_a_byte(corpus / "train" / "noise" / "shard.00000.mds")
    line = assert_refused(run_cli(_train_argv(corpus, tiny_spec, tmp_path / "run", "--steps", "3", "--resume")))
    assert "cannot resume with a different config (corpus_shards: the contents of" in line


# --- 12: a pipeline's arms are checked before any weights stage trains ---------------------------------------------
def test_every_arms_model_is_checked_before_any_weights_stage(tmp_path, tiny_spec, cli_refuses):
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 16}))
    config = tmp_path / "p.yaml"
    config.write_text(
        json.dumps(
            {
                "data": {"synthetic": {"seed": 0, "tokens_per_domain": 1024, "seq_len": 32}},
                "train": {"model": tiny_spec, "steps": 1, "batch_size": 4, "eval_blocks": 1},
                "doremi": {"proxy": tiny_spec, "steps": 1},
                "doge": None,
                "regmix": None,
                "arms": {"doremi": {"domain_weights": "doremi"}, "small": {"model": str(short)}},
            }
        )
    )
    line = cli_refuses(["pipeline", config, "--out", tmp_path / "out"])
    assert "pipeline arm 'small': " in line and "seq_len 32 exceeds the model's 16 positions" in line
    assert (tmp_path / "out" / "corpus").is_dir() and not (tmp_path / "out" / "weights").exists()  # no proxy trained


# --- trackers -------------------------------------------------------------------------------------------------------
def test_a_tensorboard_directory_that_is_a_file_drops_the_tracker_with_one_warning(synth_corpus, tiny_spec, tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("the user's notes")
    outcome = run_cli(_train_argv(synth_corpus, tiny_spec, tmp_path / "run", "--report-to", "tensorboard"))
    assert outcome.code == 0, outcome.err
    warnings = [line for line in outcome.error_lines if "report_to tensorboard" in line]
    assert len(warnings) == 1 and "not mirrored" in warnings[0] and "Traceback" not in outcome.err
    assert (tmp_path / "run" / "tensorboard").read_text() == "the user's notes"
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_read_only_tensorboard_directory_drops_the_tracker_with_one_warning(synth_corpus, tiny_spec, tmp_path, code):
    """A directory the user may not write (EACCES: tests run as root, so chmod would not bite) or on a read-only
    mount (EROFS), injected at the event file's open."""
    pytest.importorskip("tensorboard")
    board = tmp_path / "run" / "tensorboard"
    board.mkdir(parents=True)
    (board / "events.user").write_text("the user's events")
    with failing_writes(after=0, code=code, under=board):
        outcome = run_cli(_train_argv(synth_corpus, tiny_spec, tmp_path / "run", "--report-to", "tensorboard"))
    assert outcome.code == 0, outcome.err
    warnings = [line for line in outcome.error_lines if "report_to tensorboard" in line]
    assert len(warnings) == 1 and "not mirrored" in warnings[0] and os.strerror(code) in warnings[0], outcome.err
    assert "Traceback" not in outcome.err and [p.name for p in board.iterdir()] == ["events.user"]
    assert (tmp_path / "run" / "eval.json").is_file()


# --- a full disk, a read-only filesystem: injected ----------------------------------------------------------------
def test_a_disk_that_fills_during_training_is_one_line_and_the_run_resumes(synth_corpus, tiny_spec, tmp_path):
    argv = _train_argv(synth_corpus, tiny_spec, tmp_path / "run")
    with failing_writes(after=6, code=errno.ENOSPC, under=tmp_path):  # past config.yaml and the first records
        line = assert_refused(run_cli(argv))
    assert "No space left on device" in line and str(tmp_path / "run") in line
    assert not list((tmp_path / "run").rglob("*.tmp*"))  # no temporary left behind
    outcome = run_cli([*argv, "--resume"])  # space freed: the run continues
    assert outcome.code == 0, outcome.err
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_compare_eval_and_pipeline_on_a_failing_disk_are_one_line(run_copy, tmp_path, code):
    compare = ["compare", run_copy, "--out", tmp_path / "report"]
    for argv, under in ((compare, tmp_path / "report"), (["eval", run_copy], run_copy / "eval")):
        before = listing(run_copy)
        with failing_writes(after=0, code=code, under=under):
            line = assert_refused(run_cli(argv), argv)
        assert "cannot write" in line and ("No space left" in line or "Read-only" in line), line
        assert [c for c in changes(before, listing(run_copy), ok=[run_copy / "eval"]) if "removed" in c] == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_pipeline_on_a_full_or_read_only_disk_is_one_line(synth_corpus, tiny_spec, tmp_path, code):
    config = tmp_path / "p.yaml"
    arms = {"u": {"domain_weights": "uniform"}}
    train_keys = {"model": tiny_spec, "steps": 1, "batch_size": 4, "eval_blocks": 1, "progress": False}
    body = {"data": {"path": synth_corpus}, "train": train_keys, "doremi": None, "doge": None, "arms": arms}
    config.write_text(json.dumps(body))
    before = listing(tmp_path)
    with failing_writes(after=3, code=code, under=tmp_path / "out"):
        line = assert_refused(run_cli(["pipeline", config, "--out", tmp_path / "out"]))
    assert os.strerror(code) in line and str(tmp_path / "out") in line, line
    assert changes(before, listing(tmp_path), ok=[tmp_path / "out"]) == []


# --- the same on a real tmpfs, where this machine lets a test mount one ----------------------------------------------
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` to mount a tmpfs (the injected tests above run)")
def test_a_real_full_and_read_only_tmpfs(synth_corpus, tiny_spec, finished_run, tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    python = f"{sys.executable} -m mixweight"
    train_line = " ".join(str(a) for a in _train_argv(synth_corpus, tiny_spec, mount / "run"))
    script = f"""
set -u
mount -t tmpfs -o size=200k tmpfs {mount}
{python} {train_line} > {tmp_path}/train.out 2> {tmp_path}/train.err; echo $? > {tmp_path}/train.code
mount -o remount,ro {mount}
{python} compare {finished_run} --out {mount}/report 2> {tmp_path}/compare.err; echo $? > {tmp_path}/compare.code
"""
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    for name, fragment in (("train", "No space left on device"), ("compare", "on a read-only filesystem")):
        err = (tmp_path / f"{name}.err").read_text()
        lines = [line for line in err.splitlines() if line.startswith("mixweight: error: ")]
        assert (tmp_path / f"{name}.code").read_text().strip() == "2", err[-3000:]
        assert "Traceback" not in err and len(lines) == 1 and fragment in lines[0], err[-3000:]


# --- the rest of the hostile run's tracebacks ----------------------------------------------------------------------
def test_a_truncated_remote_training_shard_is_one_line(synth_corpus, tiny_spec, tmp_path):
    remote = shutil.copytree(synth_corpus, tmp_path / "remote")
    shard = remote / "train" / "noise" / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut at the URL, after the corpus was written
    argv = _train_argv(f"file://{remote}", tiny_spec, tmp_path / "run", "--cache-dir", tmp_path / "cache")
    line = assert_refused(run_cli(argv))
    assert "reading the training data failed" in line or "truncated" in line, line
    assert f"file://{remote}" in line or str(tmp_path / "cache") in line, line


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB")])
def test_running_out_of_memory_is_one_line(synth_corpus, tiny_spec, tmp_path, monkeypatch, error):
    def too_big(*args, **kwargs):
        raise error

    monkeypatch.setattr("mixweight.train.loop.build_model", too_big)
    line = assert_refused(run_cli(_train_argv(synth_corpus, tiny_spec, tmp_path / "run")))
    assert "out of memory" in line and "lower it" in line


def test_shared_memory_is_kept_from_the_resource_tracker(synth_corpus, monkeypatch):
    """A loader's segments never reach Python's resource tracker: after a kill -9 it has nothing to unlink (a new run
    over the corpus removes them), and no unregistration of a name it never saw prints a KeyError traceback."""
    from multiprocessing import resource_tracker, shared_memory

    from mixweight.core.distributed import World
    from mixweight.data.manifest import load_manifest
    from mixweight.sampling.mixture import DomainMixture
    from mixweight.sampling.schedule import resolve_schedule

    sent = []
    monkeypatch.setattr(resource_tracker._resource_tracker, "_send", lambda cmd, name, rtype: sent.append((cmd, rtype)))
    manifest = load_manifest(synth_corpus)
    mixture = DomainMixture(synth_corpus, manifest, resolve_schedule(manifest, "uniform"), 64, 8, 0, World())
    mixture.next_batch(0)
    mixture.close()
    segment = shared_memory.SharedMemory(create=True, size=16)  # any shared memory of this process, likewise
    segment.close()
    segment.unlink()
    assert [s for s in sent if s[1] == "shared_memory"] == []
