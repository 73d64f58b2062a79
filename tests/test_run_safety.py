"""A run directory under careless or hostile use: two writers, inputs changed in place, damaged
checkpoints, a full disk. Each case ends in a working run or one `mixweight: error:` line, and a
refused command leaves --out as it was."""

import errno
import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

import mixweight.train.checkpoint as ckpt
import mixweight.train.loop as loop
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

DOMAINS = ["redundant", "noise", "unigram", "markov1", "markov2", "arithmetic", "copy"]


def _weights(values: dict) -> str:
    return json.dumps({"domains": list(values), "weights": list(values.values())})


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig (corpus as a string); any default can be overridden."""

    def build(corpus, spec, out, **overrides) -> TrainConfig:
        values = dict(
            steps=2,
            batch_size=4,
            warmup_steps=1,
            eval_every=0,
            eval_blocks=2,
            checkpoint_every=2,
            log_every=1,
            progress=False,
        )
        return train_config(str(corpus), spec, out, **{**values, **overrides})

    return build


def _train_args(corpus, spec, out, *extra) -> list[str]:
    return [
        "train",
        "--data",
        str(corpus),
        "--model",
        spec,
        "--out",
        str(out),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--eval-every",
        "0",
        "--eval-blocks",
        "2",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--no-progress",
        *extra,
    ]


def _steps(run) -> list[int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def finished_run(synth_corpus, tiny_spec, tmp_path_factory, make_config):
    """A 2-step run with its checkpoint at step 2; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("finished") / "run"
    loop.train(make_config(synth_corpus, tiny_spec, run))
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy that records its own path as `out`, as if it had been trained there."""
    run = shutil.copytree(finished_run, tmp_path / "run")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(finished_run), str(run)))
    return run


# --- two writers ---------------------------------------------------------------------------------
HOLD_LOCK = """
import sys
from mixweight.train.rundir import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def test_a_second_writer_is_refused_naming_the_holder(synth_corpus, tiny_spec, tmp_path, make_config):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            MixweightError,
            match=rf"another mixweight process is writing this run "
            rf"\(pid {holder.pid} host {socket.gethostname()}\)",
        ):
            loop.train(make_config(synth_corpus, tiny_spec, run))
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the refused run was written
    finally:
        holder.stdin.close()
        holder.wait()
    loop.train(make_config(synth_corpus, tiny_spec, run))  # the holder is gone: its lock went with it
    assert (run / "eval.json").is_file()


# --- inputs changed under unchanged paths -------------------------------------------------------
def test_a_weights_file_edited_in_place_is_a_config_change(synth_corpus, tiny_spec, tmp_path, make_config):
    weights = tmp_path / "w.json"
    weights.write_text(_weights({d: 1 / 7 for d in DOMAINS}))
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", domain_weights=str(weights)))
    weights.write_text(_weights({d: (1.0 if d == "copy" else 0.0) for d in DOMAINS}))
    with pytest.raises(MixweightError, match=rf"domain_weights: the contents of {weights} changed since the run"):
        loop.train(
            make_config(synth_corpus, tiny_spec, tmp_path / "run", domain_weights=str(weights), steps=4, resume=True)
        )


def test_a_file_named_by_a_schedule_edited_in_place_is_a_config_change(synth_corpus, tiny_spec, tmp_path, make_config):
    weights, schedule = tmp_path / "w.json", tmp_path / "schedule.yaml"
    weights.write_text(_weights({d: 1 / 7 for d in DOMAINS}))
    phases = [{"start_step": 0, "weights": "natural"}, {"start_step": 3, "weights": "w.json"}]
    schedule.write_text(yaml.safe_dump(phases))
    loop.train(make_config(synth_corpus, tiny_spec, tmp_path / "run", domain_weights=str(schedule)))
    weights.write_text(_weights({d: (1.0 if d == "copy" else 0.0) for d in DOMAINS}))
    with pytest.raises(MixweightError, match=rf"domain_weights: the contents of {schedule} changed"):
        loop.train(
            make_config(synth_corpus, tiny_spec, tmp_path / "run", domain_weights=str(schedule), steps=4, resume=True)
        )


def test_a_corpus_regenerated_in_place_is_a_config_change(tiny_spec, tmp_path, make_config):
    corpus = tmp_path / "corpus"
    write_synthetic_corpus(corpus, seed=0, tokens_per_domain=2048, seq_len=64)
    loop.train(make_config(corpus, tiny_spec, tmp_path / "run"))
    write_synthetic_corpus(corpus, seed=1, tokens_per_domain=2048, seq_len=64, overwrite=True)
    with pytest.raises(MixweightError, match=rf"corpus: the contents of {corpus} changed since the run began"):
        loop.train(make_config(corpus, tiny_spec, tmp_path / "run", steps=4, resume=True))


# --- truthful metrics and results ---------------------------------------------------------------
def test_a_rerun_after_a_crash_before_the_first_checkpoint_starts_metrics_afresh(
    synth_corpus, tiny_spec, tmp_path, crash_at_step, capsys, make_config
):
    run = tmp_path / "run"
    with crash_at_step(3, message="simulated kill"), pytest.raises(KeyboardInterrupt):
        loop.train(make_config(synth_corpus, tiny_spec, run, steps=5, checkpoint_every=10))
    assert _steps(run) == [1, 2, 3] and not (run / "checkpoints").exists()
    loop.train(make_config(synth_corpus, tiny_spec, run, steps=5, checkpoint_every=10, resume=True))
    assert _steps(run) == [1, 2, 3, 4, 5]
    assert "replacing metrics.jsonl (3 records of an earlier start)" in capsys.readouterr().out


def test_resume_with_steps_below_the_checkpoint_is_refused(run_copy, synth_corpus, tiny_spec, cli_refuses):
    before = (run_copy / "eval.json").read_text()
    error = cli_refuses(_train_args(synth_corpus, tiny_spec, run_copy, "--steps", "1", "--resume"))
    assert "newest checkpoint is at step 2, past --steps 1" in error
    assert (run_copy / "eval.json").read_text() == before  # no eval.json labelled step 1 holding the step-2 model


def test_a_partial_last_metrics_line_is_dropped_on_resume(run_copy, synth_corpus, tiny_spec, capsys, make_config):
    with (run_copy / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 5.1')  # the disk filled up mid-line
    loop.train(make_config(synth_corpus, tiny_spec, run_copy, steps=4, resume=True))
    assert "dropped a partial last line" in capsys.readouterr().out
    assert _steps(run_copy) == [1, 2, 3, 4]


def test_a_moved_run_resumes(run_copy, synth_corpus, tiny_spec, tmp_path, make_config):
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run_copy, moved)
    result = loop.train(make_config(synth_corpus, tiny_spec, moved, steps=4, resume=True))
    assert json.loads((moved / "eval.json").read_text())["step"] == 4 and result["average_loss"] > 0
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    assert saved["out"] == str(moved) and saved["steps"] == 4
    assert not [p for p in moved.iterdir() if ".tmp" in p.name]  # config.yaml went through a temporary name


def test_a_run_from_before_a_new_config_key_resumes(run_copy, synth_corpus, tiny_spec, make_config):
    """A key added to mixweight after a run began is compared at its default, not as a change from None."""
    path = run_copy / "config.yaml"
    lines = [line for line in path.read_text().splitlines() if not line.startswith("  scope:")]  # in its block
    path.write_text("\n".join(lines) + "\n")
    assert loop.config_changes(run_copy, make_config(synth_corpus, tiny_spec, run_copy, steps=4, resume=True)) == ""
    changed = loop.config_changes(
        run_copy, make_config(synth_corpus, tiny_spec, run_copy, sample_weighting={"scope": "micro_batch"})
    )
    assert changed == "sample_weighting.scope: 'step' -> 'micro_batch'"


def test_a_run_made_before_the_config_marker_and_newer_keys_resumes(run_copy, synth_corpus, tiny_spec):
    """A config.yaml from an older mixweight (no marker line, none of the keys added since) is still ours."""
    path = run_copy / "config.yaml"
    newer = ("weighting_scope:", "loss_impl:", "compile:", "report_to:")
    lines = [line for line in path.read_text().splitlines()[1:] if not line.startswith(newer)]
    path.write_text("\n".join(lines) + "\n")
    result = loop.train(_config_from_file(path, steps=4, resume=True))
    assert result["average_loss"] > 0 and _steps(run_copy) == [1, 2, 3, 4]


def _config_from_file(path, **overrides) -> TrainConfig:
    from mixweight.core.config import load_config

    return load_config(TrainConfig, path, overrides)


def test_a_resave_cut_between_its_renames_keeps_the_old_copy(run_copy, synth_corpus, tiny_spec, make_config):
    """Kill between `step-N -> .step-N.replaced` and `tmp -> step-N`: the old copy is the checkpoint."""
    root = run_copy / "checkpoints"
    (root / "step-2").rename(root / ".step-2.replaced")
    shutil.copytree(root / ".step-2.replaced", root / ".step-2.tmpcut")  # the new copy, never renamed into place
    assert ckpt.latest_checkpoint(run_copy) == root / ".step-2.replaced"
    loop.train(make_config(synth_corpus, tiny_spec, run_copy, steps=4, resume=True))
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step-2", "step-4"], names  # restored by the next save, temporary copy swept


def test_an_unreadable_out_is_one_line_on_every_process(run_copy, synth_corpus, tiny_spec, monkeypatch, cli_refuses):
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(run_copy / "config.yaml"))

    monkeypatch.setattr(loop.rundir, "check_out_dir", unreadable)
    line = cli_refuses(_train_args(synth_corpus, tiny_spec, run_copy, "--resume"))
    assert f"--out {run_copy}" in line and "Permission denied" in line


# --- one line, not a traceback: damaged run directories -----------------------------------------
def _truncate_weights(run):
    path = run / "checkpoints" / "step-2" / "model" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_loader_state(run):
    path = run / "checkpoints" / "step-2" / "state.json"
    state = json.loads(path.read_text())
    del state["loader"]
    path.write_text(json.dumps(state))


def _bad_rng_state(run):
    path = run / "checkpoints" / "step-2" / "trainer_state.pt"
    blob = torch.load(path, weights_only=True)
    blob["rng"] = {"torch": torch.zeros(3, dtype=torch.uint8)}
    torch.save(blob, path)


def _garbage_trainer_state(run):
    (run / "checkpoints" / "step-2" / "trainer_state.pt").write_bytes(b"\x80\x04garbage, not a torch file" * 10)


def _no_config(run):
    (run / "config.yaml").unlink()


def _empty_config(run):
    (run / "config.yaml").write_text("")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate_weights, "model.safetensors cannot be read .*truncated or corrupted"),
        (_drop_loader_state, r"state.json has no data-loader state \('loader'\)"),
        (_bad_rng_state, "trainer_state.pt holds a bad scheduler or RNG state"),
        (_garbage_trainer_state, "trainer_state.pt is not a mixweight checkpoint's trainer state"),
        (_no_config, "holds checkpoints but no config.yaml"),
        (_empty_config, "config.yaml: is empty"),
    ],
    ids=["truncated-safetensors", "no-loader", "bad-rng", "garbage-trainer-state", "no-config", "empty-config"],
)
def test_a_damaged_run_is_one_error_line(run_copy, synth_corpus, tiny_spec, cli_refuses, damage, message):
    damage(run_copy)
    error = cli_refuses(_train_args(synth_corpus, tiny_spec, run_copy, "--resume"))
    assert __import__("re").search(message, error), error
    assert "weights_only" not in error  # torch's advice would be to load the file as code
    assert not (run_copy / "checkpoints" / "step-4").exists()


def test_out_naming_a_file_is_refused(synth_corpus, tiny_spec, tmp_path, cli_refuses):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    error = cli_refuses(_train_args(synth_corpus, tiny_spec, out))
    assert "exists and is not a directory" in error and out.read_text() == "mine"


def test_the_users_own_config_in_out_is_never_overwritten(synth_corpus, tiny_spec, tmp_path, cli_refuses):
    exp = tmp_path / "exp"
    exp.mkdir()
    mine = "# my experiment\nsteps: 4\nbatch_size: 4\n"
    (exp / "config.yaml").write_text(mine)
    argv = ["train", "--config", str(exp / "config.yaml"), *_train_args(synth_corpus, tiny_spec, exp)[1:]]
    error = cli_refuses(argv)
    assert "was not written by mixweight train" in error
    assert (exp / "config.yaml").read_text() == mine and sorted(p.name for p in exp.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.json"])
def test_files_a_run_would_replace_in_a_directory_that_is_not_a_run_are_kept(
    synth_corpus, tiny_spec, tmp_path, cli_refuses, name
):
    out = tmp_path / "results"
    out.mkdir()
    (out / name).write_text("my own numbers\n")
    error = cli_refuses(_train_args(synth_corpus, tiny_spec, out))
    assert f"holds {name} but no config.yaml, so it is not a mixweight run directory" in error
    assert (out / name).read_text() == "my own numbers\n" and sorted(p.name for p in out.iterdir()) == [name]


def test_a_bad_metrics_line_before_the_last_is_one_error_line(run_copy, synth_corpus, tiny_spec, cli_refuses):
    path = run_copy / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    error = cli_refuses(_train_args(synth_corpus, tiny_spec, run_copy, "--resume"))
    assert "metrics.jsonl: line 2 is not a metrics record" in error
    assert path.read_text().splitlines()[1] == "not json"  # left as it was for the user to look at


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--domain-weights", "w.json", "weight of 'redundant' is -0.5"),
        ("--domain-weights", "nope.json", "domain weights 'nope.json'"),
        ("--model", "spec.json", "has 'auto_map'"),
        ("--data", "no-corpus", "no manifest.json"),
    ],
    ids=["bad-weights", "missing-weights", "auto-map-spec", "missing-corpus"],
)
def test_a_refused_command_writes_nothing_into_out(
    synth_corpus, tiny_spec, tmp_path, monkeypatch, cli_refuses, flag, value, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.json").write_text(_weights({d: (-0.5 if d == "redundant" else 1.5 / 6) for d in DOMAINS}))
    (tmp_path / "spec.json").write_text(json.dumps({"model_type": "mystery-lm", "auto_map": {"AutoConfig": "x.Cfg"}}))
    out = tmp_path / "run"
    error = cli_refuses([*_train_args(synth_corpus, tiny_spec, out), flag, value])
    assert message in error
    assert not out.exists()


# --- untrusted files run no code -----------------------------------------------------------------
def test_a_checkpoint_asking_for_custom_code_is_refused(run_copy, cli_refuses):
    config_path = run_copy / "checkpoints" / "step-2" / "model" / "config.json"
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "model_type": "mystery-lm", "auto_map": {"AutoModelForCausalLM": "m.M"}}))
    error = cli_refuses(["eval", str(run_copy)])
    assert "has 'auto_map'" in error and "never runs code from files" in error


def test_model_loading_never_trusts_remote_code():
    import inspect

    from mixweight.core import model

    source = inspect.getsource(model)
    assert source.count("trust_remote_code=False") == source.count("from_pretrained(") + source.count("from_config(")


# --- a full disk during a checkpoint save --------------------------------------------------------
@pytest.mark.parametrize("where", ["torch.save", "save_pretrained"])
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous(
    synth_corpus, tiny_spec, tmp_path, monkeypatch, where, make_config
):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    loop.train(make_config(synth_corpus, tiny_spec, run))
    if where == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", full_disk)
    else:
        from transformers import PreTrainedModel

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(
        MixweightError,
        match=r"checkpoint step-4: could not be written .*\(No space left on device\); "
        r"the newest complete checkpoint, step-2, is intact",
    ):
        loop.train(make_config(synth_corpus, tiny_spec, run, steps=4, resume=True))
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written step-4
    loop.train(make_config(synth_corpus, tiny_spec, run, steps=4, resume=True))  # space again: it carries on
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]


def test_eval_of_a_run_with_an_empty_config_is_one_line(run_copy, cli_refuses):
    (run_copy / "config.yaml").write_text("")
    assert "config.yaml: empty or without 'data'" in cli_refuses(["eval", str(run_copy)])
