"""RegMix at real scale, the swarm side: a plan for a scheduler (`--plan`, runs.txt, `--fit`), the SLURM (submitit's
local executor) and Ray (a local instance of 2 CPUs) launchers with a run killed mid-way, and swarm runs on a
subsample at the main run's repetition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mixweight.errors import MixweightError

HELD_OUT = "noise,unigram,markov1,copy"  # 3 training domains: 4 runs make a regression, 5 are trained
ARGS = "--proxy gpt2-micro --runs 5 --steps 4 --train.batch-size 8 --train.warmup-steps 1 --train.eval-blocks 2"


def argv(corpus, *extra) -> list[str]:
    return [
        "weights",
        "regmix",
        "--data",
        str(corpus),
        *ARGS.split(),
        "--target",
        HELD_OUT,
        "--train.no-progress",
        *map(str, extra),
    ]


def run_cli(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mixweight", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def metrics_without_time(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time", None)
    return records


# --- a plan for any scheduler -------------------------------------------------------------------------------
def fake_results(plan: Path, runs: list[int]) -> None:
    """Runs a scheduler finished elsewhere: each one's eval.json, its losses a law of its mixture."""
    for i in runs:
        mixture = json.loads((plan / "mixtures" / f"run-{i:03d}.json").read_text())
        weights = dict(zip(mixture["domains"], mixture["weights"]))
        base = 3.0 + 0.5 * np.exp(-2 * weights["redundant"] + weights["markov2"])
        run = plan / "runs" / f"run-{i:03d}"
        run.mkdir(parents=True)
        losses = {d: {"loss": base + 0.1 * j} for j, d in enumerate(mixture["domains"])}
        (run / "eval.json").write_text(json.dumps({"step": 4, "domains": losses}))


def test_a_plan_is_written_without_training_and_fit_takes_the_runs_that_finished(synth_corpus, tmp_path, capsys):
    from mixweight.core.config import load_config
    from mixweight.domain.regmix_run import RegMixConfig, run_regmix
    from mixweight.train.config import TrainConfig

    options = dict(data=synth_corpus, proxy="gpt2-micro", runs=5, steps=4, target=HELD_OUT, plan=str(tmp_path / "p"))
    assert run_regmix(RegMixConfig(**options)) is None
    plan = (tmp_path / "p").resolve()
    assert not (plan / "runs").exists() and "planned 5 runs" in capsys.readouterr().out
    lines = (plan / "runs.txt").read_text().splitlines()
    assert lines == [f"mixweight train --config {plan}/configs/run-{i:03d}.yaml --resume" for i in range(5)]
    config = load_config(TrainConfig, plan / "configs" / "run-002.yaml", {})
    assert config.out == str(plan / "runs" / "run-002") and config.data == str(Path(synth_corpus).resolve())
    assert config.domain_weights == str(plan / "mixtures" / "run-002.json") and config.steps == 4
    fake_results(plan, [0, 1, 2])
    with pytest.raises(MixweightError, match="only 3 of 5 swarm runs have finished, the regression needs at least 4"):
        run_regmix(RegMixConfig(**options, fit=True, out=str(tmp_path / "w.json")))
    fake_results(plan, [4])
    result = run_regmix(RegMixConfig(**options, fit=True, out=str(tmp_path / "w.json")))
    assert (
        "1 of 5 swarm runs have not finished, fitting the 4 that have; not finished: run-003" in capsys.readouterr().out
    )
    assert result.method["unfinished"] == [3] and [run["run"] for run in result.method["swarm"]] == [0, 1, 2, 4]


def test_fit_with_too_few_finished_runs_is_refused_before_anything_is_written(synth_corpus, tmp_path):
    """--fit on a swarm never trained (the fuzz's case): one line, and no work directory, mixtures or config left."""
    from mixweight.domain.regmix_run import RegMixConfig, run_regmix
    from tests.sandbox import listing

    options = dict(data=synth_corpus, proxy="gpt2-micro", runs=5, steps=4, target=HELD_OUT, fit=True)
    before = listing(tmp_path)
    with pytest.raises(MixweightError, match="only 0 of 5 swarm runs have finished, the regression needs at least 4"):
        run_regmix(RegMixConfig(**options, out=str(tmp_path / "w.json")))
    assert listing(tmp_path) == before and not (tmp_path / "w.work").exists()


@pytest.mark.slow
def test_the_lines_of_a_plan_train_the_swarm_a_local_launcher_trains(synth_corpus, tmp_path):
    """runs.txt run line by line (as a scheduler would), then --fit: the bytes of the same swarm trained here."""
    plan = tmp_path / "plan"
    run_cli(argv(synth_corpus, "--plan", plan))
    for line in (plan / "runs.txt").read_text().splitlines():
        run_cli(line.split()[1:])  # `mixweight train --config ... --resume`
    out = tmp_path / "w.json"
    stdout = run_cli(argv(synth_corpus, "--plan", plan, "--fit", "--out", out))
    assert "(5 finished, 0 not)" in stdout
    local = tmp_path / "local.json"
    run_cli(argv(synth_corpus, "--plan", tmp_path / "elsewhere", "--launcher", "local", "--out", local))
    assert out.read_bytes() == local.read_bytes()


def test_plan_and_launcher_mistakes_are_refused_before_anything_is_written(
    synth_corpus, tmp_path, cli_refuses, monkeypatch
):
    import importlib.util

    assert "'launcher' must be one of local, slurm, ray, got 'sge'" in cli_refuses(
        argv(synth_corpus, "--plan", tmp_path / "p", "--launcher", "sge")
    )
    assert "did you mean 'slurm'" in cli_refuses(argv(synth_corpus, "--plan", tmp_path / "p", "--launcher", "slrum"))
    assert "--fit trains nothing" in cli_refuses(
        argv(synth_corpus, "--fit", "--launcher", "ray", "--out", tmp_path / "w")
    )
    assert "names another" in cli_refuses(argv(synth_corpus, "--plan", tmp_path / "p", "--work-dir", tmp_path / "q"))
    assert "KEY=VALUE" in cli_refuses(argv(synth_corpus, "--launcher-options", "cluster", "--out", tmp_path / "w"))
    from mixweight.core.distributed import World
    from mixweight.domain import regmix_run

    found = importlib.util.find_spec
    with monkeypatch.context() as patched:  # whether Ray is installed or not: the process count decides first
        patched.setattr(importlib.util, "find_spec", lambda name, *a: True if name == "ray" else found(name, *a))
        config = regmix_run.RegMixConfig(data=synth_corpus, plan=str(tmp_path / "p"), launcher="ray", out="w.json")
        with pytest.raises(MixweightError, match="--launcher ray submits the runs from one process; run it without"):
            regmix_run._run(config, World(rank=0, size=2))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else found(name, *a))
    message = cli_refuses(argv(synth_corpus, "--plan", tmp_path / "p", "--launcher", "slurm"))
    assert 'needs submitit, which is not installed; pip install -e ".[submitit]"' in message
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


# --- launchers ----------------------------------------------------------------------------------------------
def kill_mid_run(process: subprocess.Popen, run_dir: Path, timeout: float = 600) -> int:
    """SIGKILL the process training `run_dir` (the holder named in its lock) once it has a checkpoint but no
    eval.json; returns the step of the newest checkpoint then."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoints/step-*"))
        if steps and not (run_dir / "eval.json").exists():
            holder = (run_dir / ".lock").read_text().split()
            if len(holder) >= 2 and holder[0] == "pid":
                os.kill(int(holder[1]), signal.SIGKILL)
                return steps[-1]
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} never had a checkpoint without eval.json while the command ran")


def flaky_task(member: dict) -> float:
    """A stand-in for a swarm run: the first attempt at run 1 is killed (SIGKILL) mid-way, every other attempt
    writes the run's eval.json."""
    run = Path(member["config"]["out"])
    run.mkdir(parents=True, exist_ok=True)
    attempts = run / "attempts"
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if run.name == "run-001" and attempts.read_text() == "x":
        os.kill(os.getpid(), signal.SIGKILL)
    (run / "eval.json").write_text(json.dumps({"domains": {"a": {"loss": 1.0 + int(run.name[-1])}}}))
    return 0.0


@pytest.mark.parametrize(
    "kind, options, package", [("slurm", {"cluster": "local"}, "submitit"), ("ray", {"local_cpus": 2}, "ray")]
)
def test_a_launcher_starts_a_killed_run_again(kind, options, package, tmp_path, monkeypatch, capsys):
    """The launchers' own logic, on a task that does not train: every run done, the killed one on its second try."""
    pytest.importorskip(package)
    from mixweight.domain.swarm_launch import launch

    here = Path(__file__).resolve().parent  # the workers import this module by the name pytest gave it
    paths = [str(here), str(here.parent), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    members = [
        {"config": {"out": str(tmp_path / f"run-{i:03d}")}, "mixture": {"a": 1.0}, "targets": ["a"], "log": "-"}
        for i in range(3)
    ]
    launch(kind, members, tmp_path / kind, options, retries=1, name="regmix", task=flaky_task)
    assert [(tmp_path / f"run-{i:03d}" / "attempts").read_text() for i in range(3)] == ["x", "xx", "x"]
    out = capsys.readouterr().out
    assert out.count("mixweight regmix: run ") == 3 and "run 2/3 done" in out
    if kind == "slurm":
        assert "1 swarm run(s) failed" in out and "submitting them again" in out
    with pytest.raises(MixweightError, match=r"1 swarm run\(s\) failed 1 times through --launcher"):
        (tmp_path / "run-001" / "eval.json").unlink()
        (tmp_path / "run-001" / "attempts").unlink()
        launch(kind, members, tmp_path / f"{kind}-2", options, retries=0, name="regmix", task=flaky_task)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, options, package",
    [("slurm", "cluster=local,timeout_min=30", "submitit"), ("ray", "local_cpus=2,num_cpus=1", "ray")],
)
def test_a_launcher_trains_the_swarm_and_a_run_killed_mid_way_resumes(
    launcher, options, package, synth_corpus, tmp_path
):
    pytest.importorskip(package)
    extra = ["--steps", "40", "--train.checkpoint-every", "4"]
    straight = tmp_path / "straight.json"
    run_cli(argv(synth_corpus, "--plan", tmp_path / "here", "--launcher", "local", "--out", straight, *extra))
    plan, out = tmp_path / "plan", tmp_path / "w.json"
    command = [*argv(synth_corpus, "--plan", plan, "--launcher", launcher, "--out", out, *extra)]
    command += ["--launcher-options", options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mixweight", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    victim = plan / "runs" / "run-002"
    killed_at = kill_mid_run(process, victim)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-4000:]
    assert 0 < killed_at < 40
    log = (plan / "logs" / "run-002.log").read_text()
    assert "steps 0->40" in log and any(
        f"steps {s}->40" in log for s in range(4, 40, 4)
    )  # started again from a checkpoint
    assert out.read_bytes() == straight.read_bytes()
    assert metrics_without_time(victim) == metrics_without_time(tmp_path / "here" / "runs" / "run-002")
    if launcher == "slurm":
        assert "submitting them again" in stdout and (plan / "slurm").is_dir()


# --- proxies at the target's repetition --------------------------------------------------------------------
def test_a_subsample_keeps_a_seeded_fraction_of_every_domains_blocks_and_the_whole_validation(synth_corpus, tmp_path):
    from mixweight.data.manifest import load_manifest
    from mixweight.data.streams import read_stream
    from mixweight.data.subsample import subsample_corpus

    manifest = load_manifest(synth_corpus)
    out = tmp_path / "sub"
    sub = subsample_corpus(synth_corpus, manifest, out, 0.25, seed=3)
    for index, domain in enumerate(manifest.domains):
        full = read_stream(manifest.stream_dir(synth_corpus, "train", domain))
        kept = read_stream(sub.stream_dir(out, "train", domain))
        assert len(kept) == round(0.25 * len(full)) == sub.splits["train"][domain].blocks
        chosen = np.sort(np.random.default_rng([3, index]).choice(len(full), len(kept), replace=False))
        assert np.array_equal(kept, full[chosen])  # the seeded choice, in stream order
        val = [read_stream(m.stream_dir(root, "val", domain)) for m, root in ((manifest, synth_corpus), (sub, out))]
        assert np.array_equal(*val)
    assert sub.source["fraction"] == 0.25 and sub.source["source_config_hash"] == manifest.config_hash
    assert subsample_corpus(synth_corpus, manifest, out, 0.25, seed=3).config_hash == sub.config_hash  # reused
    with pytest.raises(MixweightError, match="holds another corpus than the subsample"):
        subsample_corpus(synth_corpus, manifest, out, 0.5, seed=3)


def test_the_subsample_fraction_is_a_runs_tokens_over_the_budget_and_can_be_turned_off(synth_corpus):
    from mixweight.cli import build_parser
    from mixweight.data.manifest import load_manifest
    from mixweight.domain.regmix_run import RegMixConfig, repetition_fraction

    manifest = load_manifest(synth_corpus)
    options = dict(data=synth_corpus, out="w.json", steps=4, train={"batch_size": 8, "grad_accum": 2})
    assert repetition_fraction(RegMixConfig(**options, token_budget=8192), manifest) == 4 * 8 * 2 * 64 / 8192
    assert repetition_fraction(RegMixConfig(**options, token_budget=4096), manifest) is None  # a run as long as T
    assert repetition_fraction(RegMixConfig(**options), manifest) is None  # no budget
    args = build_parser().parse_args(["weights", "regmix", "--token-budget", "8192", "--no-match-repetition"])
    assert args.match_repetition is False
    off = RegMixConfig(**options, token_budget=8192, match_repetition=args.match_repetition)
    assert repetition_fraction(off, manifest) is None


def test_a_corpus_url_with_a_token_budget_is_refused_before_anything_is_written(
    synth_corpus, tmp_path, cli_refuses, monkeypatch
):
    monkeypatch.setenv("MIXWEIGHT_CORPUS_CACHE", str(tmp_path / "cache"))
    url = Path(synth_corpus).resolve().as_uri()  # file:///...: read through the remote path, shards fetched lazily
    message = cli_refuses(argv(url, "--token-budget", 16384, "--out", tmp_path / "w.json"))
    assert f"{url} is a corpus URL whose shards are fetched lazily" in message and "--no-match-repetition" in message
    assert not (tmp_path / "w.work").exists()


def test_swarm_runs_repeat_every_domain_as_the_main_run_would(synth_corpus, tmp_path):
    """--token-budget T: each run trains t = 4 x 8 x 64 = 2048 tokens on a 2048 / T subsample, so its planned
    epochs per domain are those of a T-token run on the whole corpus with its mixture (up to whole blocks)."""
    from mixweight.data.manifest import load_manifest
    from mixweight.sampling.repetition import planned_epochs

    budget = 16384
    out = tmp_path / "w.json"
    stdout = run_cli(argv(synth_corpus, "--token-budget", budget, "--out", out))
    assert "each swarm run trains on 0.125 of every domain" in stdout
    work = tmp_path / "w.work"
    full = load_manifest(synth_corpus).train_tokens()
    sub = load_manifest(work / "corpus-subsample")
    for i in range(5):
        run = json.loads((work / "runs" / f"run-{i:03d}" / "repetition.json").read_text())
        mixture = json.loads((work / "mixtures" / f"run-{i:03d}.json").read_text())
        target = planned_epochs(dict(zip(mixture["domains"], mixture["weights"])), full, budget)
        for domain, epochs in run["planned_epochs"].items():
            blocks = sub.splits["train"][domain].blocks
            assert epochs == pytest.approx(target[domain], rel=1 / blocks)
    method = json.loads(out.read_text())["method"]
    assert method["subsample"]["fraction"] == 0.125 and method["max_epochs"] == 4.0  # the cap a budget gets
    assert method["repetition"]["max_epochs"] == 4.0
    message = subprocess.run(
        [sys.executable, "-m", "mixweight", *argv(synth_corpus, "--token-budget", 2 * budget, "--out", out)],
        capture_output=True,
        text=True,
    ).stderr
    assert "holds regmix proxy runs made with a different config (subsample" in message
