"""Experiment trackers: metrics.jsonl mirrored to TensorBoard, W&B (offline) and MLflow (file store),
read back with each tracker's own reader, also across a crash and --resume."""

import functools
import json
import math
import subprocess
import sys

import pytest

import mixweight.domain.doge  # noqa: F401 - registers DoGE's tracker names
import mixweight.domain.doremi  # noqa: F401 - registers DoReMi's tracker names
import mixweight.train.loop as loop
from mixweight.core import tracker_backends, tracker_names, tracking
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

STEPS, CRASH_AT, CHECKPOINT = 6, 4, 3


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig; any default can be overridden."""
    return functools.partial(
        train_config,
        steps=STEPS,
        batch_size=4,
        warmup_steps=1,
        eval_every=2,
        eval_blocks=2,
        checkpoint_every=CHECKPOINT,
        log_every=1,
        progress=False,
        sample_weighting={"name": "linupper", "histogram_every": 2},
    )


def _crash_then_resume(make_config, corpus, spec, out, crash_at_step, report_to) -> list[dict]:
    """Train, crash at step CRASH_AT (records past the checkpoint already mirrored), resume; the records."""
    with crash_at_step(CRASH_AT), pytest.raises(KeyboardInterrupt):
        loop.train(make_config(corpus, spec, out, report_to=report_to))
    first_ids = json.loads((out / tracking.STATE_FILE).read_text())
    loop.train(make_config(corpus, spec, out, report_to=report_to, resume=True))
    state = json.loads((out / tracking.STATE_FILE).read_text())
    for name in ("wandb", "mlflow"):  # a resume continues the same tracker run
        if name in first_ids:
            assert state[name]["run_id"] == first_ids[name]["run_id"]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _expected_series(records) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        step, scalars, _ = tracker_names.flatten(record)
        for name, value in scalars.items():
            series.setdefault(name, []).append((step, value))
    return series


# --- names ---------------------------------------------------------------------------------------
def test_flatten_names_every_kind_of_record():
    step_record = {
        "step": 10,
        "loss": 2.5,
        "objective": 2.4,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "tokens": 640,
        "nonfinite_samples": 0,
        "skipped_steps": 0,
        "time": {"tokens_per_s": 100.0},
        "weights": {
            "max_weight_x_n": 1.5,
            "ess_fraction": 0.8,
            "entropy": 1.3,
            "histogram_x_n": {"edges": [0.0, 1.0, 2.0, math.inf], "counts": [1, 2, 1]},
        },
        "domains": {"a{b}": {"loss": 2.0, "share": 0.5, "weight_x_n": 1.1}},
        "mixture": {"phase": 0, "domains": {"a{b}": {"target": 0.5, "achieved": 0.25, "samples": 4}}},
        "domain_weights": {"a{b}": 0.6},
        "excess_loss": {"a{b}": 0.1},
    }
    step, scalars, histograms = tracker_names.flatten(step_record)
    assert step == 10
    assert scalars["train/loss"] == 2.5 and scalars["train/lr"] == 1e-3 and scalars["train/tokens_per_s"] == 100.0
    assert scalars["sample_weights/ess_fraction"] == 0.8 and scalars["sample_weights/max_weight_x_n"] == 1.5
    assert scalars["train/a{b}/loss"] == 2.0 and scalars["sample_weights/a{b}/weight_x_n"] == 1.1
    assert scalars["mixture/a{b}/achieved"] == 0.25 and scalars["mixture/a{b}/target"] == 0.5
    assert scalars["domain_weights/a{b}"] == 0.6 and scalars["doremi/a{b}/excess_loss"] == 0.1
    histogram = histograms["sample_weights/histogram_x_n"]
    assert histogram.counts == [1, 2, 1] and histogram.edges == [0.0, 1.0, 2.0, 3.0]  # open bin closed
    assert histogram.total == 4 and histogram.sum_squares == pytest.approx(4 / 0.8)

    _, scalars, _ = tracker_names.flatten(
        {
            "step": 10,
            "eval": {
                "domains": {"code": {"loss": 1.5, "perplexity": 4.48, "tokens": 64, "gap_to_irreducible": 0.2}},
                "average_loss": 1.5,
                "average_perplexity": 4.48,
                "worst_domain": "code",
                "worst_loss": 1.5,
            },
        }
    )
    assert scalars == {
        "eval/code/loss": 1.5,
        "eval/code/perplexity": 4.48,
        "eval/code/tokens": 64.0,
        "eval/code/gap_to_irreducible": 0.2,
        "eval/average_loss": 1.5,
        "eval/average_perplexity": 4.48,
        "eval/worst_loss": 1.5,
    }

    _, scalars, _ = tracker_names.flatten(
        {"step": 3, "doge": {"alpha": {"a": 0.7}, "scores": {"a": None, "b": 0.3}, "updated": True}}
    )
    assert scalars == {"domain_weights/a": 0.7, "doge/b/score": 0.3, "doge/updated": 1.0}
    assert tracker_backends.mlflow_key("mixture/c++/achieved") == "mixture/c__/achieved"


def test_report_to_is_parsed_like_transformers_and_checked_before_anything_runs(monkeypatch, tmp_path):
    assert tracking.parse_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert tracking.parse_report_to(["mlflow", "tensorboard, mlflow"]) == ["mlflow", "tensorboard"]
    assert tracking.parse_report_to("none") == [] and TrainConfig().report_to == []
    with pytest.raises(MixweightError, match="unknown tracker 'tensorbord'; did you mean 'tensorboard'"):
        TrainConfig(data="x", out="y", report_to="tensorbord").validate()
    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(MixweightError, match=r"report_to wandb needs the wandb package.*mixweight\[tracking\]"):
        TrainConfig(data="x", out="y", report_to=["wandb"]).validate()


def test_an_unknown_tracker_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixweight",
            "train",
            "--data",
            "synthetic",
            "--out",
            str(out),
            "--report-to",
            "tensorboard,wandbb",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().splitlines() == [
        "mixweight: error: train: 'report_to' names an unknown tracker 'wandbb'; did you mean 'wandb'? "
        "choose from tensorboard, wandb, mlflow or none"
    ]


def test_proxies_pass_report_to_to_their_training_runs(synth_corpus, tmp_path):
    from mixweight.domain.doge_run import DoGEConfig, proxy_train_config
    from mixweight.domain.doremi_run import DoReMiConfig, _train_config

    doremi = DoReMiConfig(data=synth_corpus, out=str(tmp_path / "w.json"), report_to="tensorboard")
    assert _train_config(doremi, synth_corpus, tmp_path / "p", 2, "uniform").report_to == ["tensorboard"]
    doge = DoGEConfig(data=synth_corpus, out=str(tmp_path / "w.json"), report_to=["tensorboard"])
    assert proxy_train_config(doge, tmp_path / "p").report_to == ["tensorboard"]


def test_pipeline_report_to_changes_no_stage_key(synth_corpus, tmp_path):
    from mixweight.pipeline.build import build_stages
    from mixweight.pipeline.config import pipeline_config

    plain = pipeline_config({"data": {"path": synth_corpus}}, "test")
    tracked = pipeline_config(
        {"data": {"path": synth_corpus}, "train": {"report_to": ["tensorboard"]}, "doge": {"report_to": "tensorboard"}},
        "test",
    )
    keys = [s.key for s in build_stages(plain, tmp_path)[0]]
    assert keys == [s.key for s in build_stages(tracked, tmp_path)[0]] and len(keys) == 9  # data, 2 methods, 6 arms


# --- the trackers, read back -----------------------------------------------------------------------
def test_tensorboard_events_match_metrics_across_a_crash_and_resume(
    synth_corpus, tiny_spec, tmp_path, monkeypatch, make_config, crash_at_step
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    records = _crash_then_resume(make_config, synth_corpus, tiny_spec, out, crash_at_step, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    expected = _expected_series(records)
    assert {
        "train/loss",
        "eval/noise/loss",
        "mixture/noise/achieved",
        "sample_weights/ess_fraction",
        "train/noise/loss",
        "eval/average_loss",
    } <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, series in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        # one value per step (the crashed run's steps past its checkpoint were purged), equal to metrics.jsonl
        assert [s for s, _ in logged] == [s for s, _ in series], name
        assert [v for _, v in logged] == pytest.approx([v for _, v in series], rel=1e-6, abs=1e-6), name
    histogram_steps = [r["step"] for r in records if "histogram_x_n" in r.get("weights", {})]
    assert histogram_steps == [2, 4, 6]
    assert [e.step for e in events.Histograms("sample_weights/histogram_x_n")] == histogram_steps
    assert "config" in "".join(events.Tags()["tensors"])  # the resolved config, once

    from mixweight.report import compare_runs

    compare_runs([str(out)], tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Experiment trackers" in report and str(out / "tensorboard") in report


def test_wandb_offline_writes_its_run_files_and_resumes_the_same_run(
    synth_corpus, tiny_spec, tmp_path, monkeypatch, make_config, crash_at_step
):
    pytest.importorskip("wandb", reason="wandb is in the tracking extra only: pip install 'mixweight[tracking]'")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wb"),
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wbconfig"),
        "WANDB_CACHE_DIR": str(tmp_path / "wbcache"),
        "WANDB_DATA_DIR": str(tmp_path / "wbdata"),
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "wb").mkdir()
    out = tmp_path / "run"
    _crash_then_resume(make_config, synth_corpus, tiny_spec, out, crash_at_step, "wandb")
    run_id = json.loads((out / tracking.STATE_FILE).read_text())["wandb"]["run_id"]
    runs = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2  # the crashed start and its resume, one W&B run id (`wandb sync` joins them)
    data = b"".join((r / f"run-{run_id}.wandb").read_bytes() for r in runs)
    for name in (
        b"train/loss",
        b"eval/noise/loss",
        b"mixture/noise/achieved",
        b"sample_weights/ess_fraction",
        b"sample_weights/histogram_x_n",
        b"sample_weighting",
    ):  # the last: a config key
        assert name in data


def test_mlflow_file_store_has_the_params_and_metrics(
    synth_corpus, tiny_spec, tmp_path, monkeypatch, make_config, crash_at_step
):
    pytest.importorskip("mlflow", reason="mlflow is in the tracking extra only: pip install 'mixweight[tracking]'")
    from mlflow.tracking import MlflowClient

    uri = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
    out = tmp_path / "run"
    records = _crash_then_resume(make_config, synth_corpus, tiny_spec, out, crash_at_step, "mlflow")
    state = json.loads((out / tracking.STATE_FILE).read_text())["mlflow"]
    assert state["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["sample_weighting"] == "linupper" and run.data.params["batch_size"] == "4"
    for name, series in _expected_series(records).items():
        if name == "train/tokens_per_s":
            continue  # timing: the resumed run skips the steps MLflow already has, so only the steps are equal
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert [s for s, _ in history] == [s for s, _ in series], name  # no step twice across the resume
        assert [v for _, v in history] == pytest.approx([v for _, v in series], rel=1e-9, abs=1e-12), name
    bins = client.get_metric_history(run.info.run_id, "sample_weights/histogram_x_n/0-0.25")
    assert sorted(m.step for m in bins) == [2, 4, 6]


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path, capsys):
    class Failing:
        guarded = True

        def log(self, step, scalars, histograms):
            raise ConnectionError("server went away")

        def close(self, finished):
            raise AssertionError("a dropped tracker is not closed")

    trackers = tracking.Trackers(tmp_path, {"mlflow": Failing()}, {}, final_step=2)
    trackers.log_record({"step": 1, "loss": 2.0})
    trackers.log_record({"step": 2, "loss": 1.0})
    trackers.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mixweight: warning: report_to mlflow: stopped mirroring at step 1 (server went away); "
        "metrics.jsonl has every record"
    ]
    assert json.loads((tmp_path / tracking.STATE_FILE).read_text())["mark"] == [2, 0]


def test_wandb_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is in the tracking extra: pip install 'mixweight[tracking]'")

    def no_key(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", no_key)
    with pytest.raises(
        MixweightError,
        match=r"^report_to wandb: cannot start a W&B run \(api_key not configured.*"
        r"WANDB_MODE=offline",
    ):
        tracker_backends.WandbTracker(tmp_path, {}, 0, {})
