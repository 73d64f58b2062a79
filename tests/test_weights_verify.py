"""Artifacts replay alone: `mixweight weights verify` recomputes a DoReMi trajectory from the file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mixweight.cli import main
from mixweight.core.artifact import check_output_file
from mixweight.domain.doremi import INITIAL_EXCESS, DoReMiWeighting, doremi_update, replay
from mixweight.domain.doremi_run import DoReMiConfig, run_doremi
from mixweight.domain.methods import verify_file
from mixweight.errors import MixweightError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reduction(**kw) -> DoReMiWeighting:
    return DoReMiWeighting(None, ["a", "b", "c"], eta=1.0, smoothing=1e-3, **kw)


# --- the initial excess of a domain absent from the first steps ---------------------------------
def test_a_domain_absent_at_the_start_begins_at_excess_zero_and_replays_exactly():
    reduction = _reduction(log_every=1)
    # step 1: only a and b present; c has no measurement, so lambda_c stays INITIAL_EXCESS = 0
    reduction.weights(torch.ones(2), torch.tensor([0, 1]), 0, torch.tensor([[2.0, 2.0], [4.0, 2.0]]))
    assert INITIAL_EXCESS == 0.0 and reduction.excess.tolist() == [1.0, 2.0, 0.0]
    logits = torch.tensor([math.log(1 / 3) + 1.0, math.log(1 / 3) + 2.0, math.log(1 / 3)], dtype=torch.float64)
    expected = (1 - 1e-3) * torch.softmax(logits, 0) + 1e-3 / 3
    assert reduction.alpha.tolist() == pytest.approx(expected.tolist(), abs=1e-15)
    # step 2: c measured at 3.0; step 3: c absent again -> carried forward (3.0), not a fresh 0.0
    reduction.weights(torch.ones(1), torch.tensor([2]), 1, torch.tensor([[6.0, 2.0]]))
    reduction.weights(torch.ones(1), torch.tensor([0]), 2, torch.tensor([[0.0, 2.0]]))
    assert reduction.excess.tolist() == [0.0, 2.0, 3.0]
    block = reduction.replay_block()
    assert block["present"] == [[True, True, False], [False, False, True], [True, False, False]]
    assert block["signals"][2] == [0.0, 0.0, 0.0]  # as measured: absent domains' values are unused
    artifact = {"domains": ["a", "b", "c"], "replay": block}
    rows = replay(artifact)
    assert rows.shape == (4, 3) and rows[0].tolist() == [1 / 3] * 3
    assert rows[-1].tolist() == reduction.alpha.tolist()  # bit for bit: the same float64 arithmetic
    assert [e["weights"] for e in reduction.trajectory] == rows[1:].tolist()
    # without the presence mask the carried 3.0 would read as a fresh 0.0 and the weights differ
    all_present = dict(block, present=[[True] * 3] * 3)
    assert not np.allclose(replay({"domains": ["a", "b", "c"], "replay": all_present})[-1], rows[-1])
    # log(vocab) initial excess (the official code's choice) gives another trajectory: the choice is observable
    official = dict(block, initial_signal=[math.log(256)] * 3)
    assert replay({"domains": ["a", "b", "c"], "replay": official})[1][2] > 0.9


def test_the_update_of_the_replay_is_the_training_update():
    alpha = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    excess = torch.tensor([0.1, 0.0, 0.4], dtype=torch.float64)
    block = {
        "domains": ["a", "b", "c"],
        "steps": 1,
        "initial_weights": alpha.tolist(),
        "signals": [excess.tolist()],
        "present": [[True, True, True]],
        "eta": 0.7,
        "smoothing": 0.01,
        "average_start": 1,
    }
    assert (
        replay({"domains": ["a", "b", "c"], "replay": block})[1].tolist()
        == doremi_update(alpha, excess, 0.7, 0.01).tolist()
    )


# --- verify on a real (tiny) DoReMi artifact -------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(synth_corpus, tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "weights.json"
    # batch 8 over 7 domains: some steps miss a domain, so the presence mask is exercised
    run_doremi(
        DoReMiConfig(
            data=synth_corpus,
            out=str(out),
            proxy=tiny_spec,
            steps=6,
            batch_size=8,
            lr=3e-3,
            warmup_steps=1,
            log_every=2,
            checkpoint_every=1000,
            progress=False,
        )
    )
    return out


def test_a_fresh_artifact_records_every_step_and_verifies(artifact, capsys):
    saved = json.loads(artifact.read_text())
    block = saved["replay"]
    assert block["steps"] == 6 and len(block["signals"]) == 6 and len(block["present"]) == 6
    assert block["domains"] == saved["domains"] and block["initial_weights"] == [1 / 7] * 7
    assert not all(all(p) for p in block["present"])  # some domain was absent from some step
    text = artifact.read_text()  # compact: one line per step in the replay arrays
    assert all(f"      {json.dumps(row)}" in text for row in block["signals"] + block["present"])
    assert "replayed 6 doremi steps; 5 recorded weight vectors match" in verify_file(artifact)
    main(["weights", "verify", str(artifact)])  # returns normally: exit status 0
    assert "replayed 6 doremi steps" in capsys.readouterr().out


def _edit_signal(raw):
    raw["replay"]["present"][4][0] = True  # make the edited signal count
    raw["replay"]["signals"][4][0] += 0.5


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda raw: raw["trajectory"][1]["weights"].__setitem__(2, raw["trajectory"][1]["weights"][2] + 1e-3),
            "trajectory step 4, domain 'unigram'",
        ),
        (_edit_signal, "trajectory step 6|last_weights"),
        (lambda raw: raw["replay"].__setitem__("eta", 2.0), "trajectory step 2, domain"),
    ],
)
def test_an_edited_artifact_fails_verify_naming_the_step(artifact, tmp_path, capsys, edit, named):
    raw = json.loads(artifact.read_text())
    edit(raw)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    with pytest.raises(
        MixweightError,
        match=f"does not replay: first deviation above the tolerance 1e-06 at ({named}).*largest deviation",
    ):
        verify_file(edited)
    with pytest.raises(SystemExit) as code:
        main(["weights", "verify", str(edited)])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mixweight: error:") and err.count("\n") == 1


def test_verify_refuses_a_file_without_replay_in_one_line(tmp_path):
    path = tmp_path / "hand.json"
    path.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}, "method": {"name": "doremi"}}))
    with pytest.raises(MixweightError, match="no 'replay' block"):
        verify_file(path)
    path.write_text(
        json.dumps(
            {
                "weights": {"a": 0.5, "b": 0.5},
                "method": {"name": "doremi"},
                "replay": {
                    "domains": ["a", "b"],
                    "steps": 1,
                    "initial_weights": [0.5, 0.5],
                    "signals": [[0.0, "x"]],
                    "present": [[True, True]],
                    "eta": 1,
                    "smoothing": 0,
                },
            }
        )
    )
    with pytest.raises(MixweightError, match=r"'replay.signals\[0\]' must be 2 finite numbers"):
        verify_file(path)
    path.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}}))
    with pytest.raises(MixweightError, match="verify checks doremi, doge, regmix, online:odm, online:doremi artifacts"):
        verify_file(path)


# --- --out is checked before any training --------------------------------------------------------------
def test_out_naming_a_directory_is_refused_before_training(synth_corpus, tiny_spec, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    import mixweight.domain.proxy as proxy

    monkeypatch.setattr(proxy, "train", no_training)  # what train_or_reuse calls: the guard can fail
    config = DoReMiConfig(data=synth_corpus, out=str(tmp_path), proxy=tiny_spec, steps=2, progress=False)
    with pytest.raises(MixweightError, match=r"--out .* is a directory; give a file path"):
        run_doremi(config)
    (tmp_path / "file").write_text("x")
    config = DoReMiConfig(
        data=synth_corpus, out=str(tmp_path / "file" / "w.json"), proxy=tiny_spec, steps=2, progress=False
    )
    with pytest.raises(MixweightError, match="is not a directory, so the file cannot be written"):
        run_doremi(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_check_output_file_accepts_a_new_path_under_missing_folders(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "w.json", "--out") == tmp_path / "new" / "deeper" / "w.json"
    assert not (tmp_path / "new").exists()


def test_trajectory_weights_as_maps_verify_too(artifact, tmp_path):
    raw = json.loads(artifact.read_text())  # DoGE writes {domain: weight} maps in its trajectory
    for entry in raw["trajectory"]:
        entry["weights"] = dict(zip(raw["domains"], entry["weights"]))
    maps = tmp_path / "maps.json"
    maps.write_text(json.dumps(raw))
    assert "5 recorded weight vectors match" in verify_file(maps)
    raw["trajectory"][0]["weights"]["elsewhere"] = 0.0
    maps.write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=r"trajectory step 2 names domains \['elsewhere'\]"):
        verify_file(maps)


ODD = [None, True, 0, -1, 2**70, 1e308, float("nan"), "x", "", [], {}, [[]], [True], [0.5], {"a": 1}]


def test_mangled_replay_blocks_are_one_line_errors_never_tracebacks(artifact, tmp_path):
    import random

    rng = random.Random(0)
    original = json.loads(artifact.read_text())
    keys = [
        "domains",
        "steps",
        "initial_weights",
        "signals",
        "present",
        "average_start",
        "eta",
        "smoothing",
        "initial_signal",
    ]
    for case in range(150):
        raw = json.loads(json.dumps(original))
        block = raw["replay"]
        key = rng.choice(keys)
        if key in ("signals", "present") and rng.random() < 0.5 and block[key]:
            row = rng.randrange(len(block[key]))
            block[key][row] = rng.choice(ODD) if rng.random() < 0.5 else block[key][row][:-1]
        else:
            block[key] = rng.choice(ODD)
        path = tmp_path / f"m{case}.json"
        path.write_text(json.dumps(raw))
        try:
            verify_file(path)
        except MixweightError as exc:
            assert "\n" not in str(exc)
