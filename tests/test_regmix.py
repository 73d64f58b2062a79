"""RegMix-style regression mixing: the fit and the optimum on exact data, then `mixweight weights regmix` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixweight.domain.regmix import (
    LogLinear,
    cross_validate,
    make_regressor,
    optimise,
    sample_mixtures,
)
from mixweight.errors import MixweightError

PRIOR = np.array([0.5, 0.3, 0.2])
LAWS = [  # L_i(r) = c + k exp(t . r), t centred (the fit's identification)
    {"c": 1.0, "k": 2.0, "t": [-2.0, 0.5, 1.5]},
    {"c": 0.5, "k": 1.0, "t": [1.0, -3.0, 2.0]},
]


def law_losses(x: np.ndarray) -> np.ndarray:
    return np.column_stack([law["c"] + law["k"] * np.exp(x @ np.array(law["t"])) for law in LAWS])


# --- pure: mixtures, fit, optimum ----------------------------------------------------------
def test_the_swarm_holds_the_prior_uniform_and_sparse_dirichlet_draws():
    x = sample_mixtures(PRIOR, 24, 1.0, seed=3)
    assert x.shape == (24, 3) and np.allclose(x.sum(axis=1), 1)
    assert np.allclose(x[0], PRIOR) and np.allclose(x[1], 1 / 3)
    assert (x == 0).any(axis=1).sum() >= 1  # small Dirichlet scales give some sparse mixtures
    assert len({tuple(row) for row in x}) == 24
    # row i depends on (seed, i) only: a larger swarm extends a smaller one, another seed differs
    assert np.array_equal(sample_mixtures(PRIOR, 8, 1.0, seed=3), x[:8])
    assert not np.array_equal(sample_mixtures(PRIOR, 8, 1.0, seed=4)[2:], x[2:8])


def test_the_loglinear_fit_recovers_a_mixing_law_from_exact_data():
    x = sample_mixtures(PRIOR, 30, 1.0, seed=0)
    model = LogLinear().fit(x, law_losses(x))
    for law, fitted in zip(LAWS, model.params):
        assert fitted["c"] == pytest.approx(law["c"], abs=1e-6)
        assert fitted["k"] == pytest.approx(law["k"], rel=1e-6)
        assert fitted["t"] == pytest.approx(law["t"], abs=1e-6)
    held_out = sample_mixtures(PRIOR, 40, 1.0, seed=9)[30:]
    assert np.allclose(model.predict(held_out), law_losses(held_out).mean(axis=1), atol=1e-8)


def test_the_optimum_matches_a_brute_force_grid_on_three_domains():
    x = sample_mixtures(PRIOR, 30, 1.0, seed=0)
    model = LogLinear().fit(x, law_losses(x))
    grid = np.linspace(0, 1, 201)
    points = np.array([[a, b, 1 - a - b] for a in grid for b in grid if a + b <= 1 + 1e-12])
    points = np.clip(points, 0, None)
    true = law_losses(points).mean(axis=1)
    best = points[true.argmin()]
    chosen = optimise(model, PRIOR)
    assert np.abs(chosen - best).max() <= 0.01  # within the grid's step of 0.005, twice
    assert law_losses(chosen[None]).mean() <= true.min() + 1e-9


def test_the_optimum_respects_caps_and_the_kl_pull_moves_it_toward_the_prior():
    x = sample_mixtures(PRIOR, 30, 1.0, seed=0)
    model = LogLinear().fit(x, law_losses(x))
    free = optimise(model, PRIOR)
    caps = np.array([0.4, 1.0, 1.0])
    capped = optimise(model, PRIOR, caps=caps)
    assert capped[0] <= 0.4 + 1e-9 and free[0] > 0.4
    pulled = optimise(model, PRIOR, kl_reg=1.0)

    def kl(w):
        w = np.maximum(w, 1e-12)
        return float(np.sum(w * np.log(w / PRIOR)))

    assert kl(pulled) < kl(free)
    assert np.array_equal(optimise(model, PRIOR, kl_reg=1.0, seed=0), pulled)  # deterministic


def test_leave_one_out_on_exact_data_ranks_perfectly():
    x = sample_mixtures(PRIOR, 12, 1.0, seed=1)
    stats = cross_validate("loglinear", x, law_losses(x), seed=0)
    assert stats["method"] == "leave-one-out" and len(stats["predicted"]) == 12
    assert stats["spearman"] == pytest.approx(1.0) and stats["mae"] < 1e-4


def test_an_unknown_regressor_gets_the_closest_name():
    with pytest.raises(MixweightError, match="did you mean 'loglinear'"):
        make_regressor("loglinaer", 0)


def test_lightgbm_ranks_exact_law_data_and_its_search_is_deterministic():
    pytest.importorskip("lightgbm")
    x = sample_mixtures(PRIOR, 40, 1.0, seed=0)
    stats = cross_validate("lightgbm", x, law_losses(x), seed=0)
    assert stats["spearman"] > 0.8  # trees rank a smooth law well from 40 points, without knowing its form
    chosen = optimise(make_regressor("lightgbm", 0).fit(x, law_losses(x)), PRIOR, seed=0)
    again = optimise(make_regressor("lightgbm", 0).fit(x, law_losses(x)), PRIOR, seed=0)
    assert np.array_equal(chosen, again) and chosen.sum() == pytest.approx(1.0)
    assert law_losses(chosen[None]).mean() < law_losses(PRIOR[None]).mean()  # better than the prior it started from


def test_lightgbm_missing_is_one_line_naming_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lightgbm(name, *args, **kwargs):
        if name == "lightgbm":
            raise ImportError("No module named 'lightgbm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightgbm)
    x = sample_mixtures(PRIOR, 8, 1.0, seed=1)
    with pytest.raises(MixweightError, match=r'pip install -e "\.\[regmix\]"') as info:
        make_regressor("lightgbm", 0).fit(x, law_losses(x))
    assert "\n" not in str(info.value)
    from mixweight.domain.regmix_run import RegMixConfig

    with pytest.raises(MixweightError, match="needs LightGBM"):  # when the config is read, before any swarm run
        RegMixConfig(data="c", out="w.json", regressor="lightgbm").validate()


# --- `mixweight weights regmix` end to end -------------------------------------------------------
HELD_OUT = "noise,unigram,markov1,copy"  # 3 training domains left, so 5 runs are enough for the regression
TRAINED = ["redundant", "markov2", "arithmetic"]


def regmix_argv(corpus, out, *extra) -> list[str]:
    args = "--proxy gpt2-micro --runs 5 --steps 4 --train.batch-size 8 --train.warmup-steps 1 --train.eval-blocks 2"
    args += f" --target {HELD_OUT}"
    return ["weights", "regmix", "--data", str(corpus), "--out", str(out), *args.split(), "--train.no-progress", *extra]


def run_cli(argv: list[str], env_extra: dict | None = None, torchrun: list[str] | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = [sys.executable, *(torchrun or []), "-m", "mixweight", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def own_work_dir(swarm, tmp_path) -> Path:
    """A copy of the finished swarm's work directory for a test that changes it (the module's stays as made).
    The runs' configs name their paths (out, mixture file): the copy's are moved with it."""
    import shutil

    out, _ = swarm
    work = out.parent / "domain_weights.work"
    copy = tmp_path / "domain_weights.work"
    shutil.copytree(work, copy)
    for path in copy.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json"):
            text = path.read_text()
            if str(work) in text:
                path.write_text(text.replace(str(work), str(copy)))
    return copy


@pytest.fixture(scope="module")
def swarm(synth_corpus, tmp_path_factory):
    """One finished tiny swarm: (artifact path, the command's stdout)."""
    out = tmp_path_factory.mktemp("regmix") / "first" / "domain_weights.json"
    stdout = run_cli(regmix_argv(synth_corpus, out))
    return out, stdout


def test_a_tiny_swarm_writes_the_artifact_the_other_commands_take(swarm, synth_corpus, capsys):
    from mixweight.cli import main
    from mixweight.core.artifact import load_domain_weights
    from mixweight.data.manifest import load_manifest
    from mixweight.sampling.schedule import resolve_schedule

    out, stdout = swarm
    raw = json.loads(out.read_text())
    weights = load_domain_weights(out)
    domains = load_manifest(synth_corpus).domains
    assert raw["domains"] == domains and raw["targets"] == HELD_OUT.split(",")
    assert sum(raw["weights"]) == pytest.approx(1.0)
    assert all(weights.as_dict()[d] == 0.0 for d in HELD_OUT.split(","))
    method = raw["method"]
    assert method["name"] == "regmix" and method["runs"] == 5 and method["regressor"] == "auto"
    assert method["fit"]["regressor"] == "loglinear"  # auto: 5 runs are too few for the power law
    assert list(method["prior_weights"]) == TRAINED
    assert len(method["swarm"]) == 5
    for run in method["swarm"]:
        assert all(run["weights"][d] == 0.0 for d in HELD_OUT.split(","))  # held out of every swarm run
        assert sum(run["weights"].values()) == pytest.approx(1.0)
        assert set(run["losses"]) == set(domains)
        assert run["target_loss"] == pytest.approx(np.mean([run["losses"][d] for d in HELD_OUT.split(",")]))
    cv = method["fit"]["cross_validation"]
    assert cv["method"] == "leave-one-out" and len(cv["predicted"]) == 5
    observed = [run["target_loss"] for run in method["swarm"]]  # the MAE is of these held-out predictions
    assert cv["mae"] == pytest.approx(np.mean(np.abs(np.array(cv["predicted"]) - observed)))
    assert method["fit"]["target_domains"] == HELD_OUT.split(",") and len(method["fit"]["laws"]) == 4
    assert raw["provenance"]["seed"] == 0 and raw["provenance"]["proxy"]["name"] == "gpt2-micro"
    assert "Spearman" in stdout and stdout.count("mixweight regmix: run ") == 5
    assert (
        raw["warnings"][0]["code"] == "small-swarm"
        and "5 runs for a law with 4 parameters" in raw["warnings"][0]["message"]
    )
    assert out.with_name("domain_weights_fit.png").is_file() and out.with_name("domain_weights_bars.png").is_file()
    # train takes it as a mixture; verify refits the swarm table to the same weights; export prints it
    phases = resolve_schedule(load_manifest(synth_corpus), str(out))
    assert phases[0].weights == pytest.approx(weights.as_dict())
    main(["weights", "verify", str(out)])
    assert "refitted 5 regmix swarm runs" in capsys.readouterr().out
    main(["weights", "export", str(out), "--format", "json"])
    assert json.loads(capsys.readouterr().out) == pytest.approx(weights.as_dict())


def test_verify_catches_an_edited_regmix_artifact(swarm, tmp_path, cli_refuses):
    out, _ = swarm
    raw = json.loads(out.read_text())
    raw["method"]["swarm"][0]["losses"]["noise"] += 1.0  # another observed loss: another fit and optimum
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    assert "does not replay" in cli_refuses(["weights", "verify", edited])


def test_the_same_swarm_twice_gives_the_same_bytes(swarm, synth_corpus, tmp_path):
    out, _ = swarm
    again = tmp_path / "again.json"
    run_cli(regmix_argv(synth_corpus, again))
    assert again.read_bytes() == out.read_bytes()


def test_an_interrupted_swarm_trains_only_its_missing_runs(swarm, synth_corpus, tmp_path):
    import shutil

    out, _ = swarm
    work = own_work_dir(swarm, tmp_path)
    shutil.rmtree(work / "runs" / "run-003")  # killed before its first checkpoint
    (work / "runs" / "run-001" / "eval.json").unlink()  # killed after its last checkpoint, before eval.json
    kept = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("run-00[024]/eval.json")}
    resumed = tmp_path / "resumed.json"
    stdout = run_cli(regmix_argv(synth_corpus, resumed, "--work-dir", str(work)))
    assert "(3 finished, 2 to train)" in stdout
    assert sorted(line.split()[3] for line in stdout.splitlines() if " done" in line) == ["2/5", "4/5"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished runs were not touched
    assert resumed.read_bytes() == out.read_bytes()


def test_a_larger_swarm_keeps_the_runs_it_has(swarm, synth_corpus, tmp_path):
    work = own_work_dir(swarm, tmp_path)
    stdout = run_cli(regmix_argv(synth_corpus, tmp_path / "six.json", "--work-dir", str(work), "--runs", "6"))
    assert "(5 finished, 1 to train)" in stdout
    assert len(json.loads((tmp_path / "six.json").read_text())["method"]["swarm"]) == 6


def test_a_work_dir_of_another_swarm_is_refused(swarm, synth_corpus, cli_refuses):
    out, _ = swarm
    work = out.parent / "domain_weights.work"
    argv = regmix_argv(synth_corpus, out.parent / "other.json", "--work-dir", str(work), "--steps", "5")
    message = cli_refuses(argv)
    assert "steps: 4 -> 5" in message and "another --work-dir" in message
    argv = regmix_argv(synth_corpus, out.parent / "other.json", "--work-dir", str(work), "--train.lr", "0.01")
    assert "train.lr: 0.003 -> 0.01" in cli_refuses(argv)


def test_checkpoint_options_do_not_refuse_a_work_dir(swarm, synth_corpus, tmp_path):
    """How often a run checkpoints and how many it keeps change no result: the swarm is reused."""
    work = own_work_dir(swarm, tmp_path)
    extra = ["--work-dir", str(work), "--train.checkpoint-every", "2", "--train.keep-checkpoints", "2"]
    stdout = run_cli(regmix_argv(synth_corpus, tmp_path / "w.json", *extra))
    assert "(5 finished, 0 to train)" in stdout and (work / "regmix_config.yaml").is_file()


@pytest.mark.distributed
def test_two_processes_split_the_swarm_and_write_the_same_artifact(swarm, synth_corpus, tmp_path, free_port):
    out, _ = swarm
    two = tmp_path / "two.json"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    stdout = run_cli(regmix_argv(synth_corpus, two), torchrun=torchrun)
    assert stdout.count("[process 0]") == 3 and stdout.count("[process 1]") == 2  # runs 0, 2, 4 and 1, 3
    assert "mixweight regmix: swarm progress: 5/5 runs finished" in stdout  # the main process watches them all
    assert two.read_bytes() == out.read_bytes()


def test_too_few_runs_is_refused_before_training(synth_corpus, tmp_path, cli_refuses):
    message = cli_refuses(regmix_argv(synth_corpus, tmp_path / "w.json", "--runs", "3"))
    assert "--runs 3 is too few for 3 training domains" in message and "at least 4" in message
    assert not (tmp_path / "w.work").exists()


def test_an_unknown_regressor_is_refused_with_the_closest(synth_corpus, tmp_path, cli_refuses):
    message = cli_refuses(regmix_argv(synth_corpus, tmp_path / "w.json", "--regressor", "lightgmb"))
    assert "did you mean 'lightgbm'" in message


def test_a_target_naming_no_domain_is_refused(synth_corpus, tmp_path, cli_refuses):
    argv = regmix_argv(synth_corpus, tmp_path / "w.json")
    argv[argv.index(HELD_OUT)] = "noise,arithmetc"
    message = cli_refuses(argv)
    assert "--target 'arithmetc' is not a domain" in message and "did you mean 'arithmetic'" in message


def test_an_infeasible_repetition_budget_is_refused_before_training(synth_corpus, tmp_path, cli_refuses):
    argv = regmix_argv(synth_corpus, tmp_path / "w.json", "--token-budget", "10000000", "--max-epochs", "1")
    message = cli_refuses(argv)
    assert "no mixture fits a budget of 10,000,000 tokens within 1 epochs per domain" in message
    assert not (tmp_path / "w.work").exists()
    assert "needs --token-budget" in cli_refuses(regmix_argv(synth_corpus, tmp_path / "w.json", "--max-epochs", "2"))


def test_a_pipeline_with_a_regmix_section_and_arm(tmp_path, capsys):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": "gpt2-micro", "steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 2},
        "doremi": None,
        "doge": None,
        "regmix": {
            "runs": 5,
            "steps": 3,
            "target": HELD_OUT,
            "kl_reg": 0.2,
            "token_budget": 8192,  # 3 training domains of 4096 tokens: caps of 0.75 each at 1.5 epochs
            "max_epochs": 1.5,
            "train": {"batch_size": 8, "warmup_steps": 1, "eval_blocks": 2},
        },
        "arms": {
            "uniform": {"domain_weights": "uniform"},
            "regmix": {"domain_weights": "regmix", "max_epochs": 100},
        },
        "progress": False,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(path), out)
    weights = json.loads((out / "weights" / "regmix" / "domain_weights.json").read_text())
    assert weights["method"]["name"] == "regmix" and len(weights["method"]["swarm"]) == 5
    assert weights["method"]["kl_reg"] == 0.2 and weights["method"]["repetition"]["max_epochs"] == 1.5
    assert weights["method"]["repetition"]["token_budget"] == 8192
    assert max(weights["weights"]) <= 0.75 + 1e-6
    run_config = yaml.safe_load((out / "runs" / "regmix-seed0" / "config.yaml").read_text())
    assert run_config["domain_weights"].endswith("weights/regmix/domain_weights.json")
    assert report["domain_weights"]["regmix"]["weights"] == pytest.approx(
        dict(zip(weights["domains"], weights["weights"]))
    )
    assert set(report["planned_epochs"]) == {"uniform", "regmix"}
    assert report["planned_epochs"]["regmix"]["max_epochs"] == 100
    assert all(report["planned_epochs"]["regmix"]["epochs"][d] == 0 for d in HELD_OUT.split(","))
    markdown = (out / "report" / "report.md").read_text()
    assert "## Planned epochs per domain" in markdown
    assert "### regmix: the swarm's fit" in markdown and (out / "report" / "regmix_fit_regmix.png").stat().st_size > 0
    capsys.readouterr()
    run_pipeline(load_pipeline_config(path), out)
    assert capsys.readouterr().out.count(": cached") == 4  # data, regmix and the two arms


def test_a_diverged_swarm_run_is_named_not_fitted(swarm, synth_corpus, tmp_path, cli_refuses):
    work = own_work_dir(swarm, tmp_path)
    eval_json = work / "runs" / "run-002" / "eval.json"
    record = json.loads(eval_json.read_text())
    record["domains"]["noise"]["loss"] = float("nan")
    eval_json.write_text(json.dumps(record))
    message = cli_refuses(regmix_argv(synth_corpus, tmp_path / "w.json", "--work-dir", str(work)))
    assert "swarm run(s) [2] ended with a non-finite validation loss" in message
    assert not (tmp_path / "w.json").exists()


def test_the_lightgbm_regressor_refits_a_finished_swarm_and_verifies(swarm, synth_corpus, tmp_path, capsys):
    pytest.importorskip("lightgbm")
    from mixweight.cli import main

    out, _ = swarm
    work = out.parent / "domain_weights.work"
    trees = tmp_path / "trees.json"
    stdout = run_cli(regmix_argv(synth_corpus, trees, "--work-dir", str(work), "--regressor", "lightgbm"))
    assert "(5 finished, 0 to train)" in stdout and "lightgbm fit over 5 runs" in stdout  # the runs are reused
    raw = json.loads(trees.read_text())
    assert raw["method"]["regressor"] == "lightgbm" and "laws" not in raw["method"]["fit"]
    assert raw["method"]["swarm"] == json.loads(out.read_text())["method"]["swarm"]
    main(["weights", "verify", str(trees)])
    assert "refitted 5 regmix swarm runs (lightgbm)" in capsys.readouterr().out


def test_a_pipeline_regmix_section_that_does_not_fit_the_corpus_is_refused_before_training(tmp_path):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": "gpt2-micro", "steps": 2, "batch_size": 8},
        "doremi": None,
        "doge": None,
        "regmix": {"runs": 5, "steps": 2, "target": "noise,arithmetc"},
        "arms": {"uniform": {"domain_weights": "uniform"}, "regmix": {"domain_weights": "regmix"}},
        "progress": False,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(MixweightError, match="pipeline 'regmix': weights regmix: --target 'arithmetc'"):
        run_pipeline(load_pipeline_config(path), tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()  # refused after the corpus, before any arm or swarm run
    config["regmix"]["target"] = "noise"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(MixweightError, match="--runs 5 is too few for 6 training domains"):
        run_pipeline(load_pipeline_config(path), tmp_path / "out")


@pytest.mark.slow
def test_kill_9_mid_swarm_then_rerun_gives_the_same_bytes(synth_corpus, tmp_path):
    import signal
    import time

    extra = ["--steps", "20", "--train.checkpoint-every", "3"]
    straight = tmp_path / "straight.json"
    run_cli(regmix_argv(synth_corpus, straight, *extra))
    killed = tmp_path / "killed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mixweight", *regmix_argv(synth_corpus, killed, *extra)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "killed.work" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("run-002/checkpoints/step-*")):  # inside the third run
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists() and (runs / "run-001" / "eval.json").is_file()
    stdout = run_cli(regmix_argv(synth_corpus, killed, *extra))
    finished = int(stdout.split(" finished, ")[0].rsplit("(", 1)[1])
    assert 2 <= finished < 5
    assert killed.read_bytes() == straight.read_bytes()


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(child) for child in task.read_text().split()}
    return found


@pytest.mark.slow  # ~30 s of CPU; the fast mocked test of the tracker covers the rule
def test_kill_9_mid_swarm_then_rerun_prints_no_traceback(synth_corpus, tmp_path):
    """The command itself, killed mid-swarm and run again: the rerun exits 0 without a traceback; neither it nor
    the killed process's resource tracker (which outlives it, writing to its stderr) prints one."""
    import signal
    import time

    out = tmp_path / "w.json"
    command = [sys.executable, "-m", "mixweight", *regmix_argv(synth_corpus, out, "--train.checkpoint-every", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_err = tmp_path / "killed.err"
    with killed_err.open("w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    runs = tmp_path / "w.work" / "runs"
    while process.poll() is None and not list(runs.glob("run-001/checkpoints/step-*")):  # inside the second run
        time.sleep(0.05)
    helpers = _children(process.pid)  # the resource tracker among them
    assert process.poll() is None, killed_err.read_text()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    while any(Path(f"/proc/{pid}").exists() for pid in helpers):  # its helpers see the pipe close and exit
        time.sleep(0.05)
    assert not out.exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(out.read_text())["method"]["name"] == "regmix"
    for err in (killed_err.read_text(), rerun.stderr):
        assert "Traceback" not in err and "resource_tracker" not in err, err[-3000:]


def test_fit_warnings_name_a_small_swarm_and_a_poor_ranking():
    from mixweight.domain.regmix_fit import fit_warnings
    from mixweight.domain.regmix_run import RegMixConfig

    poor = {"cross_validation": {"method": "leave-one-out", "spearman": 0.2}}
    good = {"cross_validation": {"method": "leave-one-out", "spearman": 0.9}}
    codes = lambda config, fit: [w["code"] for w in fit_warnings(config, fit, 3, ["a"])]  # noqa: E731
    assert codes(RegMixConfig(runs=12), good) == []  # 3 x (3 + 1) runs
    assert codes(RegMixConfig(runs=11), good) == ["small-swarm"]
    assert codes(RegMixConfig(runs=11, regressor="lightgbm"), good) == []  # trees have no parameter count
    assert codes(RegMixConfig(runs=40), poor) == ["poor-fit"]
    assert codes(RegMixConfig(runs=5), {"cross_validation": {"method": "leave-one-out", "spearman": float("nan")}}) == [
        "small-swarm",
        "poor-fit",
    ]


def test_a_shared_memory_name_clash_starts_the_run_again(monkeypatch):
    from mixweight.domain import swarm as regmix_run

    monkeypatch.setattr(regmix_run.time, "sleep", lambda seconds: None)
    calls = []

    def clashing(config):
        calls.append(config)
        if len(calls) < 3:
            raise FileExistsError(17, "File exists", "/000047_locals")

    regmix_run._train_with_retries(clashing, "config")
    assert calls == ["config"] * 3
    calls.clear()
    with pytest.raises(FileExistsError):
        regmix_run._train_with_retries(clashing, "config", attempts=2)


class _Child:
    """A stand-in for this process's swarm child: each poll, one run of some process finishes; it exits after
    its own share (`exits_after` polls) with `code`."""

    def __init__(self, runs, order, exits_after, code=0):
        self.runs, self.order, self.polls, self.exits_after, self.code = runs, list(order), 0, exits_after, code

    def poll(self):
        self.polls += 1
        if self.order:
            run = self.runs[self.order.pop(0)]
            run.mkdir(parents=True, exist_ok=True)
            (run / "eval.json").write_text("{}")
        return self.code if self.polls > self.exits_after else None

    def wait(self):
        return self.code

    def terminate(self):
        pass


def test_the_main_process_shows_whole_swarm_progress_while_its_own_child_trains(tmp_path, capsys):
    from mixweight.domain.swarm import watch_swarm

    runs = [tmp_path / f"run-{i:03d}" for i in range(5)]
    child = _Child(runs, order=[1, 0, 3, 2, 4], exits_after=5)  # the child runs while all five finish
    assert watch_swarm(child, runs, report=True, bar=False, poll=0) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "swarm progress" in line]
    assert [line.split()[4] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert "left" in lines[0] and "left" not in lines[-1]
    assert child.polls <= 6  # the lines came while the child was still running, not after it

    failing = _Child([tmp_path / "x", tmp_path / "y"], order=[], exits_after=0, code=3)
    assert watch_swarm(failing, [tmp_path / "x", tmp_path / "y"], report=True, bar=False, poll=0) == 3


def test_the_fit_options_reuse_the_swarm_and_a_capped_artifact_verifies_and_exports(
    swarm, synth_corpus, tmp_path, capsys
):
    """--kl-reg, --token-budget and --max-epochs change only the fit (with --no-match-repetition: by default a
    token budget also trains the swarm at its repetition, another swarm): the finished runs are reused, the
    artifact records the caps (its repetition block), verify refits within them, export --data re-caps."""
    from mixweight.cli import main
    from mixweight.data.manifest import load_manifest

    out, _ = swarm
    work = out.parent / "domain_weights.work"
    tokens = load_manifest(synth_corpus).train_tokens()
    budget = sum(tokens[d] for d in TRAINED)  # caps 1.2 x the training domains' natural proportions
    capped = tmp_path / "capped.json"
    extra = ["--work-dir", str(work), "--kl-reg", "0.5", "--token-budget", str(budget), "--max-epochs", "1.2"]
    stdout = run_cli(regmix_argv(synth_corpus, capped, *extra, "--no-match-repetition"))
    assert "(5 finished, 0 to train)" in stdout
    raw = json.loads(capped.read_text())
    method = raw["method"]
    assert method["kl_reg"] == 0.5 and method["token_budget"] == budget and method["max_epochs"] == 1.2
    repetition = method["repetition"]
    assert repetition["max_epochs"] == 1.2 and repetition["token_budget"] == budget
    weights = dict(zip(raw["domains"], raw["weights"]))
    for d in TRAINED:
        assert repetition["caps"][d] == pytest.approx(1.2 * tokens[d] / budget)
        assert weights[d] <= repetition["caps"][d] + 1e-6 and repetition["epochs_after"][d] <= 1.2 + 1e-6
    assert raw["weights"] != json.loads(out.read_text())["weights"]  # the pull and the caps moved the optimum
    capsys.readouterr()
    main(["weights", "verify", str(capped)])
    assert "refitted 5 regmix swarm runs (loglinear); the recorded weights match" in capsys.readouterr().out
    argv = ["weights", "export", str(out), "--format", "json", "--token-budget", str(budget), "--max-epochs", "2"]
    main([*argv, "--data", str(synth_corpus)])
    exported = json.loads(capsys.readouterr().out)
    assert all(exported[d] <= 2 * tokens[d] / budget + 1e-6 for d in TRAINED)  # within 2 epochs of the corpus's
    assert sum(exported.values()) == pytest.approx(1.0)


def test_a_uniform_prior_and_a_concentration_define_another_swarm(synth_corpus, tmp_path, capsys):
    from mixweight.cli import main

    out = tmp_path / "uniform.json"
    run_cli(regmix_argv(synth_corpus, out, "--prior", "uniform", "--concentration", "4"))
    method = json.loads(out.read_text())["method"]
    assert method["prior"] == "uniform" and method["concentration"] == 4.0
    assert method["prior_weights"] == pytest.approx({d: 1 / 3 for d in TRAINED})
    first = method["swarm"][0]["weights"]
    assert [first[d] for d in TRAINED] == pytest.approx([1 / 3] * 3)  # the swarm's first run is the prior
    assert len({tuple(run["weights"][d] for d in TRAINED) for run in method["swarm"]}) == 5
    capsys.readouterr()
    main(["weights", "verify", str(out)])
    assert "the recorded weights match" in capsys.readouterr().out


def test_export_help_names_every_artifact_it_takes(capsys):
    from mixweight.cli import main

    with pytest.raises(SystemExit):
        main(["weights", "export", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "from weights doremi, doge or regmix" in shown and "online mixing run" in shown
