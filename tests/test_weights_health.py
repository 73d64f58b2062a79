"""Weights that collapse say so: weight_warnings on hand-made trajectories, the DoReMi runner, the report."""

from __future__ import annotations

import json

import numpy as np
import torch

from mixweight.domain.health import weight_warnings

DOMAINS = ["a", "b", "c", "d"]


def _codes(found):
    return [w["code"] for w in found]


def test_a_healthy_trajectory_has_no_warnings():
    steps = np.linspace(0, 1, 21)[:, None]
    w = (1 - steps) * np.full(4, 0.25) + steps * np.array([0.3, 0.3, 0.2, 0.2])
    w[-3:] = [0.3, 0.3, 0.2, 0.2]  # settled over the last 10%
    assert weight_warnings(w, DOMAINS, floor=1e-3 / 4) == []


def test_near_one_hot_names_the_first_step_and_the_domain():
    w = np.full((21, 4), 0.25)
    w[7:] = [0.02, 0.92, 0.03, 0.03]
    (found,) = weight_warnings(w, DOMAINS)
    assert found["code"] == "one-hot" and found["step"] == 7 and found["domains"] == ["b"]
    assert "'b' holds 0.920" in found["message"] and "smaller step size" in found["message"]
    assert "larger batch" in found["message"] and "more --steps" in found["message"]


def test_low_entropy_without_one_hot():
    w = np.full((21, 4), 0.25)
    w[12:] = [0.55, 0.44, 0.005, 0.005]  # two domains starve the others, but entropy stays above the floor
    assert "low-entropy" not in _codes(weight_warnings(w, DOMAINS))
    w[12:] = [0.88, 0.118, 0.001, 0.001]
    (found,) = weight_warnings(w, DOMAINS)
    assert found["code"] == "low-entropy" and found["step"] == 12 and found["domains"] == ["a", "b"]


def test_a_domain_stuck_at_the_smoothing_floor():
    floor = 1e-3 / 4
    w = np.tile([0.3, 0.3, 0.4 - floor, floor], (21, 1))
    w[:15, 2:] = [0.2, 0.2 - 0.0]  # d reaches the floor at step 15 and stays there
    w[:15, :2] = [0.3, 0.3]
    found = weight_warnings(w, DOMAINS, floor=floor)
    assert _codes(found) == ["at-floor"]
    assert found[0]["domains"] == ["d"] and found[0]["step"] == 15
    assert weight_warnings(w, DOMAINS, floor=None) == []  # no floor given: not checked
    w[-1, 3] = 0.01  # leaves the floor at the last step: not stuck
    w[-1, 2] -= 0.01 - floor
    assert "at-floor" not in _codes(weight_warnings(w, DOMAINS, floor=floor))


def test_weights_still_moving_at_the_end():
    w = np.full((21, 4), 0.25)
    w[19:] = [[0.3, 0.2, 0.25, 0.25], [0.35, 0.15, 0.25, 0.25]]  # L1 0.2 over the last 2 steps
    (found,) = weight_warnings(w, DOMAINS)
    assert found["code"] == "not-converged" and found["step"] == 18 and sorted(found["domains"]) == ["a", "b"]
    assert "L1 change 0.200" in found["message"]
    assert weight_warnings(w[:6], DOMAINS) == []  # 5 steps: too short to call


def test_doremi_records_and_prints_collapse(synth_corpus, tiny_spec, tmp_path, capsys):
    from mixweight.domain.doremi_run import DoReMiConfig, run_doremi

    torch.set_num_threads(1)
    out = tmp_path / "w.json"
    run_doremi(
        DoReMiConfig(
            data=synth_corpus,
            out=str(out),
            proxy=tiny_spec,
            steps=3,
            batch_size=8,
            eta=200.0,
            warmup_steps=1,
            log_every=1,
            checkpoint_every=1000,
            progress=False,
        )
    )
    saved = json.loads(out.read_text())  # eta 200: the weights collapse within a step or two
    collapse = [w for w in saved["warnings"] if w["code"] in ("one-hot", "low-entropy")]
    assert collapse and 1 <= collapse[0]["step"] <= 3 and set(collapse[0]["domains"]) <= set(saved["domains"])
    assert f"mixweight doremi: warning: [{collapse[0]['code']}]" in capsys.readouterr().err


def test_the_report_shows_the_warnings_next_to_the_weights(tmp_path):
    from test_report import _corpus, _run

    from mixweight.report import compare_runs

    corpus = _corpus(tmp_path / "corpus")
    run = _run(tmp_path / "uniform", corpus, {"a": 1.0, "b": 2.0})
    weights = tmp_path / "dw.json"
    warning = {"code": "one-hot", "step": 7, "domains": ["b"], "message": "weights near one-hot: 'b' holds 0.950"}
    weights.write_text(
        json.dumps(
            {"domains": ["a", "b"], "weights": [0.05, 0.95], "method": {"name": "doremi"}, "warnings": [warning]}
        )
    )
    report = compare_runs([run], tmp_path / "out", weights_files={"DoReMi": weights})
    assert report["domain_weights"]["DoReMi"]["warnings"] == [warning]
    md = (tmp_path / "out" / "report.md").read_text()
    section = md[md.index("## Domain weights") :]
    assert section.index("| b |") < section.index("**DoReMi** [one-hot] weights near one-hot: 'b' holds 0.950 (step 7)")
