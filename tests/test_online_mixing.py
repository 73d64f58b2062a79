"""Online domain mixing in the main run (`--domain-weights online:odm|online:doremi --mixing.every K`).

The update rules against hand computations and the offline DoReMi rule; end to end: the
phases, the artifact and its replay as a static schedule, kill -9 mid-phase then resume, two
processes against one, and the bad inputs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_weighting import EXACT_ATOL

from mixweight.domain.doremi import DoReMiWeighting
from mixweight.domain.methods import verify_file
from mixweight.errors import MixweightError
from mixweight.train.mixers import phase_average
from mixweight.train.online_doremi import DoReMiMixer
from mixweight.train.step import StepResult

DOMAINS = ["a", "b", "c"]


def _result(losses: list[float], domains: list[int]) -> StepResult:
    losses_t = torch.tensor(losses, dtype=torch.float32)
    return StepResult(losses_t, torch.tensor(domains), torch.full_like(losses_t, 1 / len(losses)), 0.0, len(losses))


# --- the update rules ---------------------------------------------------------------------------------
def test_online_doremi_applies_the_offline_proxy_update_to_the_same_signals():
    offline = DoReMiWeighting(None, DOMAINS, eta=0.7, smoothing=0.01)
    online = DoReMiMixer(DOMAINS, [1 / 3] * 3, every=3, eta=0.7, smoothing=0.01)
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        domains = torch.tensor([0, 0, 1, 1, 2, 2])[: 4 + step % 3]  # some steps lack domain c
        losses = torch.rand(len(domains), generator=generator) * 4
        losses[0] = float("nan") if step == 4 else losses[0]
        sig = torch.stack([torch.rand(len(domains), generator=generator) * 60, torch.full((len(domains),), 63.0)], 1)
        offline.weights(losses, domains, step, signal=sig)
        online.update(sig.to(torch.float64), losses, domains)
        assert torch.equal(online.alpha, offline.alpha) and torch.equal(online.excess, offline.excess)


# --- end to end ---------------------------------------------------------------------------------------
STEPS, EVERY = 16, 6


def _train(corpus, spec, out, *extra, steps=STEPS, batch=8):
    args = f"--steps {steps} --batch-size {batch} --lr 3e-3 --warmup-steps 2 --eval-every 8 --eval-blocks 2"
    args += " --checkpoint-every 4 --log-every 2 --no-progress"
    return ["train", "--data", corpus, "--model", spec, "--out", str(out), *args.split(), *extra]


ODM = ["--domain-weights", "online:odm", "--mixing.every", str(EVERY), "--mixing.odm.exploration", "0.05"]
LINUPPER = ["--sample-weighting", "linupper", "--sample-weighting.cap", "2"]


def _run(argv, launcher=(sys.executable, "-m", "mixweight")):
    done = subprocess.run([*launcher, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def _params(run, steps=STEPS):
    return load_file(str(run / "checkpoints" / f"step-{steps}" / "model" / "model.safetensors"))


def _records(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time", None)
    return records


@pytest.fixture(scope="module")
def odm_run(synth_corpus, tiny_spec, tmp_path_factory):
    """ODM + LinUpper with a cap, uninterrupted: phases at steps 0, 6, 12."""
    out = tmp_path_factory.mktemp("online") / "straight"
    _run(_train(synth_corpus, tiny_spec, out, *ODM, *LINUPPER))
    return out


def test_odm_run_records_its_phases_and_a_weights_artifact_that_replays_as_a_schedule(
    odm_run, synth_corpus, tiny_spec, tmp_path
):
    artifact = json.loads((odm_run / "domain_weights.json").read_text())
    assert artifact["method"]["name"] == "online:odm" and artifact["method"]["mixing_every"] == EVERY
    assert [e["step"] for e in artifact["trajectory"]] == [0, 6, 12]
    first, *later = [e["weights"] for e in artifact["trajectory"]]
    assert first == pytest.approx([1 / 7] * 7) and all(w != first for w in later)  # the bandit moved them
    records = [r for r in _records(odm_run) if "loss" in r]
    assert all("online_mixing" in r and "weights" in r for r in records)  # both levels are recorded
    by_step = {r["step"]: r for r in records}
    # the phase's first step is logged with its weights; the loader samples that phase
    assert by_step[7]["online_mixing"]["phase_start"] == 6 and by_step[7]["mixture"]["phase"] == 1
    assert list(by_step[7]["online_mixing"]["weights"].values()) == artifact["trajectory"][1]["weights"]
    assert by_step[7]["weights"]["max_weight_x_n"] <= 2 + 1e-6  # the sample weights act within the batch

    # another run follows the trajectory as a static schedule: the same phases, the same samples, the same model
    replay = tmp_path / "replay"
    _run(
        _train(
            synth_corpus,
            tiny_spec,
            replay,
            "--domain-weights",
            str(odm_run / "domain_weights.json"),
            "--domain-weights-every",
            str(EVERY),
            *LINUPPER,
        )
    )
    replayed = {r["step"]: r["mixture"] for r in _records(replay) if "loss" in r}
    for step, record in ((s, r) for s, r in by_step.items() if s % 2 == 0):  # both logged every 2 steps
        assert replayed[step]["phase"] == record["mixture"]["phase"]
        for domain, share in record["mixture"]["domains"].items():
            assert replayed[step]["domains"][domain]["samples"] == share["samples"]  # the same draws
            assert replayed[step]["domains"][domain]["target"] == pytest.approx(share["target"], abs=1e-12)
    a, b = _params(odm_run), _params(replay)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_odm_runs_artifact_verifies_and_an_edited_phase_does_not(odm_run, tmp_path, capsys):
    """`weights verify RUN/domain_weights.json` recomputes every phase's mixture from the state it recorded."""
    from mixweight.cli import main

    artifact = json.loads((odm_run / "domain_weights.json").read_text())
    assert artifact["method"]["reward"] == "smoothed" and [e["observed"] for e in artifact["trajectory"][1:]] == [6, 12]
    assert main(["weights", "verify", str(odm_run / "domain_weights.json")]) in (0, None)
    out = capsys.readouterr().out
    assert "recomputed 3 online:odm phases" in out and "5 recorded weight vectors match" in out

    edited = json.loads(json.dumps(artifact))
    edited["trajectory"][2]["weights"][0] += 0.01  # an edited phase
    edited["trajectory"][2]["weights"][1] -= 0.01
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(edited))
    with pytest.raises(MixweightError, match="first deviation above the tolerance 1e-06 at phase at step 12"):
        verify_file(path)
    edited = json.loads(json.dumps(artifact))
    edited["method"]["alpha"] = 0.5  # the options count: another alpha is another smoothing, not this run
    edited["method"]["reward"] = "exp3"
    path.write_text(json.dumps(edited))
    with pytest.raises(MixweightError, match="does not replay"):
        verify_file(path)


def test_verify_checks_consistency_not_provenance(odm_run, tmp_path):
    """A forged signal with the weights its policy gives passes: verify cannot know where a signal came from."""
    from mixweight.core.artifact import load_domain_weights
    from mixweight.domain.online_verify import replay_phases

    forged = json.loads((odm_run / "domain_weights.json").read_text())
    forged["trajectory"][1]["signal"] = [1.0, 2.0, 3.0, 40.0, 5.0, 6.0, 7.0]
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    starts, rows, steps = replay_phases(load_domain_weights(path), "forged")
    forged["trajectory"][1]["weights"] = rows[1].tolist()
    forged["weights"] = phase_average(starts, rows, steps).tolist()
    path.write_text(json.dumps(forged))
    assert "match" in verify_file(path)


def test_an_online_artifact_from_an_earlier_version_is_refused_by_verify_in_one_line(odm_run, cli_refuses, tmp_path):
    old = json.loads((odm_run / "domain_weights.json").read_text())
    for key in ("reward", "exploration"):
        old["method"].pop(key)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    line = cli_refuses(["weights", "verify", path])
    assert "'method' has no 'reward', 'exploration': written by an earlier mixweight" in line
    assert "still trains as a schedule" in line


def _exp3_sums_from_the_log(records, domains) -> dict[int, list[float]]:
    """The EXP3 reward as ODM's official updater sums it, from a run's per-step log (log_every 1): after each step,
    R_i += (n_i / (N pi_i)) L_i / 10 with n_i / N its logged share, L_i its logged mean loss, pi_i the phase's
    target. {steps done: R}."""
    sums, out = [0.0] * len(domains), {}
    for record in sorted((r for r in records if "loss" in r), key=lambda r: r["step"]):
        targets = record["mixture"]["domains"]
        for i, name in enumerate(domains):
            logged = record["domains"].get(name)
            if logged is not None:
                sums[i] += logged["share"] / targets[name]["target"] * logged["loss"] / 10
        out[record["step"]] = list(sums)
    return out


def test_odm_exp3_from_the_cli_sums_its_logged_losses_and_its_artifact_verifies(
    synth_corpus, tiny_spec, tmp_path, capsys
):
    """`--mixing.odm.reward exp3`: each phase's recorded sums are the official EXP3 reward of the run's own logged
    losses, its weights the EXP3 policy (1 - k eps) softmax(eps R) + eps of them (fixed eps, uniform prior), and
    `weights verify` recomputes the phases."""
    import math

    from mixweight.cli import main

    run, every = tmp_path / "exp3", 3
    flags = ["--domain-weights", "online:odm", "--mixing.every", str(every), "--mixing.odm.exploration", "0.05"]
    _run(_train(synth_corpus, tiny_spec, run, *flags, "--mixing.odm.reward", "exp3", "--log-every", "1", steps=8))
    artifact = json.loads((run / "domain_weights.json").read_text())
    assert artifact["method"]["reward"] == "exp3" and artifact["method"]["exploration"] == 0.05
    phases = artifact["trajectory"]
    assert [e["step"] for e in phases] == [0, 3, 6] and [e["observed"] for e in phases[1:]] == [3, 6]
    logged = _exp3_sums_from_the_log(_records(run), artifact["domains"])
    k, eps = len(artifact["domains"]), 0.05
    for entry in phases[1:]:
        assert entry["signal"] == pytest.approx(logged[entry["step"]], rel=1e-5)  # the log holds float32 means
        scores = [math.exp(eps * r) for r in entry["signal"]]
        assert entry["weights"] == pytest.approx([(1 - k * eps) * s / sum(scores) + eps for s in scores], rel=1e-12)
    assert all(b >= a for a, b in zip(phases[1]["signal"], phases[2]["signal"]))  # cumulative sums only grow
    assert sum(phases[2]["signal"]) > sum(phases[1]["signal"]) > 0
    assert phases[2]["weights"] != phases[0]["weights"]
    assert main(["weights", "verify", str(run / "domain_weights.json")]) in (0, None)
    assert "recomputed 3 online:odm phases" in capsys.readouterr().out


KILL_MID_PHASE = textwrap.dedent("""
    import os, signal, sys
    from mixweight.cli import main
    from mixweight.train import odm, online_doremi

    mixer = {"ODMMixer": odm.ODMMixer, "DoReMiMixer": online_doremi.DoReMiMixer}[sys.argv[1]]
    real = mixer.observe
    def die_at_step_10(self, step, result, micro_batches):
        real(self, step, result, micro_batches)
        if step == 10:  # checkpoint step-8 is written; the phase that began at 6 is half done
            os.kill(os.getpid(), signal.SIGKILL)
    mixer.observe = die_at_step_10
    main(sys.argv[2:])
""")


def _refuses_an_earlier_state(cli_refuses, killed, argv, tmp_path, drop: str) -> str:
    """A copy of the killed run whose checkpoint's mixer state lacks `drop` (as an earlier mixweight wrote it):
    --resume is refused in one line and writes nothing."""
    import shutil

    from mixweight.data.manifest import load_manifest
    from mixweight.sampling.shm import clean_stale_shared_memory

    corpus = Path(argv[argv.index("--data") + 1])
    manifest = load_manifest(corpus)  # the kill -9 left shared memory, whose removal the next run would announce
    clean_stale_shared_memory([str(manifest.stream_dir(corpus, "train", d)) for d in manifest.domains])
    old = tmp_path / "old-state"
    shutil.copytree(killed, old)
    state_path = old / "checkpoints" / "step-8" / "state.json"
    state = json.loads(state_path.read_text())
    state["mixing"].pop(drop)
    state_path.write_text(json.dumps(state))
    files = lambda: {f.name: f.read_bytes() for f in old.iterdir() if f.is_file() and f.name != ".lock"}  # noqa: E731
    before = files()
    line = cli_refuses([*[str(old) if a == str(killed) else a for a in argv], "--resume"])
    assert files() == before  # the lock names its holder; nothing else is written
    assert sorted(c.name for c in (old / "checkpoints").iterdir()) == ["step-4", "step-8"]
    return line


def test_kill_9_mid_phase_then_resume_gives_the_same_weights_parameters_and_metrics(
    odm_run, synth_corpus, tiny_spec, tmp_path, cli_refuses
):
    killed = tmp_path / "killed"
    argv = _train(synth_corpus, tiny_spec, killed, *ODM, *LINUPPER)
    done = subprocess.run([sys.executable, "-c", KILL_MID_PHASE, "ODMMixer", *argv], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    state = json.loads((killed / "checkpoints" / "step-8" / "state.json").read_text())
    assert [p["start_step"] for p in state["mixing"]["phases"]] == [0, 6]  # the bandit's state is in the checkpoint
    assert not (killed / "checkpoints" / f"step-{STEPS}").exists()
    line = _refuses_an_earlier_state(cli_refuses, killed, argv, tmp_path, "reward")
    assert "step-8: its online:odm state comes from an earlier mixweight" in line and "start it afresh" in line

    _run([*argv, "--resume"])
    a, b = _params(odm_run), _params(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _records(killed) == _records(odm_run)
    assert (killed / "domain_weights.json").read_text() == (odm_run / "domain_weights.json").read_text()
    assert (killed / "eval.json").read_text() == (odm_run / "eval.json").read_text()


@pytest.fixture(scope="module")
def reference_run(synth_corpus, tiny_spec, tmp_path_factory, train_config):
    from mixweight.train.loop import train

    out = tmp_path_factory.mktemp("reference") / "reference"
    train(train_config(synth_corpus, tiny_spec, out, steps=6, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=0,
                       eval_blocks=2, progress=False))  # fmt: skip
    return out


def test_online_doremi_killed_mid_phase_resumes_to_the_same_run(
    reference_run, synth_corpus, tiny_spec, tmp_path, cli_refuses, capsys
):
    """Online DoReMi's state (its alpha, the reference it was pinned to) survives kill -9 like ODM's."""
    flags = ["--domain-weights", "online:doremi", "--mixing.every", str(EVERY)]
    flags += ["--mixing.doremi.reference", str(reference_run)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_train(synth_corpus, tiny_spec, straight, *flags))
    argv = _train(synth_corpus, tiny_spec, killed, *flags)
    done = subprocess.run([sys.executable, "-c", KILL_MID_PHASE, "DoReMiMixer", *argv], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (killed / "checkpoints" / f"step-{STEPS}").exists()
    line = _refuses_an_earlier_state(cli_refuses, killed, argv, tmp_path, "exploration")
    assert "its online:doremi state comes from an earlier mixweight, which sampled alpha itself" in line
    _run([*argv, "--resume"])
    a, b = _params(straight), _params(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _records(killed) == _records(straight)
    assert (killed / "domain_weights.json").read_text() == (straight / "domain_weights.json").read_text()
    artifact = json.loads((straight / "domain_weights.json").read_text())
    weights = artifact["trajectory"]
    assert len(weights) == 3 and weights[2]["weights"] != weights[0]["weights"]  # the mixture moved
    # its step's extra work, recorded with the run's FLOPs: one no-grad forward of the reference (same model here)
    compute = json.loads((straight / "eval.json").read_text())["compute"]
    model = compute["model_flops_per_step"]
    assert compute["extra_flops_per_step"] == {"reference_forward": pytest.approx(model / 3, rel=1e-12)}
    assert artifact["method"]["exploration"] == 0.1  # the default floor: every phase holds 0.1 / 7 of each domain
    assert min(min(w["weights"]) for w in weights) >= 0.1 / 7 - 1e-12
    assert "recomputed 3 online:doremi phases" in verify_file(straight / "domain_weights.json")


def test_online_doremi_with_another_exploration_from_the_cli_samples_that_share_of_the_prior(
    reference_run, synth_corpus, tiny_spec, tmp_path
):
    """`--mixing.doremi.exploration 0.4`: every phase samples 0.6 alpha + 0.4 prior (DoReMi's alpha recorded beside it),
    the loader draws that mixture, and `weights verify` recomputes the phases."""
    flags = [
        "--domain-weights",
        "online:doremi",
        "--mixing.every",
        "3",
        "--mixing.doremi.reference",
        str(reference_run),
    ]
    flags += ["--mixing.doremi.eta", "2", "--mixing.doremi.exploration", "0.4", "--mixing.prior", "natural"]
    run = tmp_path / "floor"
    _run(_train(synth_corpus, tiny_spec, run, *flags, steps=8))
    artifact = json.loads((run / "domain_weights.json").read_text())
    assert artifact["method"]["exploration"] == 0.4
    prior, phases = artifact["method"]["prior"], artifact["trajectory"]
    assert [e["step"] for e in phases] == [0, 3, 6] and phases[0]["weights"] == pytest.approx(prior, rel=1e-12)
    for entry in phases[1:]:
        expected = [0.6 * a + 0.4 * p for a, p in zip(entry["alpha"], prior)]
        assert entry["weights"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert min(w / p for w, p in zip(entry["weights"], prior)) >= 0.4 - 1e-12  # the floor, relative to the prior
    assert phases[2]["alpha"] != prior  # alpha moved, so the floor is what held the weights
    targets = {r["step"]: r["mixture"]["domains"] for r in _records(run) if "loss" in r}
    assert [targets[8][d]["target"] for d in artifact["domains"]] == phases[2]["weights"]  # what the loader drew from
    assert "recomputed 3 online:doremi phases" in verify_file(run / "domain_weights.json")


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["doremi", "odm"])
def test_online_mixing_with_linupper_on_two_processes_equals_one(
    method, request, synth_corpus, tiny_spec, tmp_path, free_port, float64_mixweight
):
    """Both methods decide from losses gathered over every process: 2 processes x 4 == 1 process x 8."""
    flags = ["--domain-weights", f"online:{method}", "--mixing.every", "2"]
    if method == "doremi":
        flags += ["--mixing.doremi.reference", str(request.getfixturevalue("reference_run"))]
    else:  # the decaying eps_t is 1/k, all exploration, for t <= k ln k: the phases would be the prior
        flags += ["--mixing.odm.exploration", "0.05"]
    flags += ["--mixing.prior", "natural", *LINUPPER]
    # float64 models: 1 and 2 processes sum in other orders, which Adam amplifies in float32 (see EXACT_ATOL)
    _run(_train(synth_corpus, tiny_spec, tmp_path / "one", *flags, steps=6, batch=8), launcher=float64_mixweight)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    _run(
        _train(synth_corpus, tiny_spec, tmp_path / "two", *flags, steps=6, batch=4),
        launcher=(*torchrun, *float64_mixweight[1:]),
    )
    one, two = (json.loads((tmp_path / r / "domain_weights.json").read_text()) for r in ("one", "two"))
    assert [e["step"] for e in one["trajectory"]] == [e["step"] for e in two["trajectory"]] == [0, 2, 4]
    for a, b in zip(one["trajectory"][1:], two["trajectory"][1:]):
        assert a["weights"] == pytest.approx(b["weights"], abs=1e-6)
        assert a["signal"] == pytest.approx(b["signal"], rel=1e-5, abs=1e-5) and max(a["signal"]) > 0  # ODM: exp(L)
    assert one["trajectory"][2]["weights"] != one["trajectory"][0]["weights"]
    p1, p2 = _params(tmp_path / "one", 6), _params(tmp_path / "two", 6)
    assert p1.keys() == p2.keys() and all(v.dtype == torch.float64 for v in p1.values())
    for key in p1:
        torch.testing.assert_close(p2[key], p1[key], atol=EXACT_ATOL, rtol=0, msg=key)


# --- bad input: one line, nothing written -------------------------------------------------------------
def _refused(cli_refuses, corpus, spec, out, *flags) -> str:
    line = cli_refuses(_train(corpus, spec, out, *flags, steps=2))
    assert not out.exists()
    return line


def test_an_unknown_online_method_gets_the_closest_name(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", "--domain-weights", "online:odn")
    assert "did you mean 'online:odm'" in line


def test_online_mixing_needs_steps_per_phase(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", "--domain-weights", "online:odm")
    assert "'mixing.every' > 0" in line
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", "--mixing.every", "5")
    assert "is for online domain weights" in line


def test_online_doremi_needs_a_reference_run_of_the_same_vocabulary(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    flags = ["--domain-weights", "online:doremi", "--mixing.every", "2"]
    assert "needs 'mixing.doremi.reference'" in _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *flags)
    assert "not a finished run directory" in _refused(
        cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *flags, "--mixing.doremi.reference", str(tmp_path)
    )
    other = tmp_path / "other-vocab"
    (other / "checkpoints" / "step-1" / "model").mkdir(parents=True)
    (other / "config.yaml").write_text("data: elsewhere\n")
    (other / "checkpoints" / "step-1" / "state.json").write_text('{"step": 1, "loader": {}}')
    (other / "checkpoints" / "step-1" / "model" / "config.json").write_text('{"vocab_size": 50257}')
    line = _refused(
        cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *flags, "--mixing.doremi.reference", str(other)
    )
    assert "vocab_size 50257" in line and "has 256" in line


def test_an_exploration_rate_above_one_over_k_is_refused(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *ODM[:4], "--mixing.odm.exploration", "0.5")
    assert "(0, 1/k]" in line


def test_an_unknown_odm_reward_or_an_exploration_outside_0_1_is_refused(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *ODM[:4], "--mixing.odm.reward", "paper")
    assert "'mixing.odm.reward' must be one of smoothed, exp3, got 'paper'" in line
    flags = ["--domain-weights", "online:doremi", "--mixing.every", "2", "--mixing.doremi.reference", str(tmp_path)]
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *flags, "--mixing.doremi.exploration", "1.5")
    assert "'mixing.doremi.exploration' must be in [0, 1] (the prior's share of each phase), got 1.5" in line


# --- the pipeline and its report ----------------------------------------------------------------------
def test_pipeline_runs_odm_and_online_doremi_arms_and_reports_their_trajectories(tmp_path, tiny_spec):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    short = {"lr": 3e-3, "warmup_steps": 1, "batch_size": 8, "progress": False}
    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": tiny_spec, "steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3,
                  "eval_blocks": 4},
        "doremi": {"proxy": tiny_spec, "steps": 4, "reference_steps": 4, "log_every": 2, "train": short},
        "doge": None,
        "arms": {
            "uniform": {"domain_weights": "uniform"},
            "odm": {"domain_weights": "online:odm", "mixing": {"every": 2, "odm": {"exploration": 0.05}}},
            "online-doremi": {
                "domain_weights": "online:doremi",
                "mixing": {"every": 2},
                "sample_weighting": "linupper",
            },
        },
        "progress": False,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(path), out)

    reference = out / "weights" / "doremi" / "work" / "round-0" / "reference"
    saved = yaml.safe_load((out / "runs" / "online-doremi-seed0" / "config.yaml").read_text())
    assert saved["mixing"]["doremi"]["reference"] == str(reference) and (reference / "eval.json").is_file()
    for arm in ("odm", "online-doremi"):
        mixture = report["domain_weights"][arm]
        assert mixture["method"]["name"] == f"online:{arm.split('-')[-1]}"
        assert mixture["trajectory"]["steps"] == [0, 2, 4]
    assert "doremi" in report["domain_weights"]  # the offline weights, beside them
    assert (out / "report" / "online_trajectories.png").is_file()
    assert "online_trajectories.png" in (out / "report" / "report.md").read_text()


def test_a_pipeline_arm_with_odm_reward_exp3_runs_that_updater(tmp_path, tiny_spec):
    """`mixing: {odm: {reward: exp3}}` in an arm reaches its run: the saved config, the artifact's method and sums
    that only grow; no weights stage runs for it (ODM needs none)."""
    import yaml

    from mixweight.domain.methods import verify_file
    from mixweight.pipeline import load_pipeline_config, run_pipeline

    arm = {"domain_weights": "online:odm", "mixing": {"every": 2, "odm": {"reward": "exp3", "exploration": 0.05}}}
    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": tiny_spec, "steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 0,
                  "eval_blocks": 2},
        "arms": {"odm-exp3": arm},
        "progress": False,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(path), out)

    run = out / "runs" / "odm-exp3-seed0"
    assert yaml.safe_load((run / "config.yaml").read_text())["mixing"]["odm"]["reward"] == "exp3"
    assert not (out / "weights").exists() or not any((out / "weights").iterdir())
    mixture = report["domain_weights"]["odm-exp3"]
    assert mixture["method"]["name"] == "online:odm" and mixture["method"]["reward"] == "exp3"
    assert mixture["trajectory"]["steps"] == [0, 2, 4]
    phases = json.loads((run / "domain_weights.json").read_text())["trajectory"]
    assert all(b >= a for a, b in zip(phases[1]["signal"], phases[2]["signal"])) and sum(phases[1]["signal"]) > 0
    assert "recomputed 3 online:odm phases" in verify_file(run / "domain_weights.json")


def test_an_epoch_cap_cannot_bound_phases_decided_during_the_run(cli_refuses, synth_corpus, tiny_spec, tmp_path):
    line = _refused(cli_refuses, synth_corpus, tiny_spec, tmp_path / "r", *ODM[:4], "--max-epochs", "2")
    assert "drop max_epochs" in line


def test_resuming_against_a_reference_run_that_changed_is_refused(
    reference_run, cli_refuses, synth_corpus, tiny_spec, tmp_path
):
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(reference_run, reference)
    flags = ["--domain-weights", "online:doremi", "--mixing.every", "2", "--mixing.doremi.reference", str(reference)]
    _run(_train(synth_corpus, tiny_spec, tmp_path / "run", *flags, steps=2))
    from mixweight.train.checkpoint import latest_checkpoint

    state = latest_checkpoint(reference) / "state.json"
    state.write_text(state.read_text() + "\n")  # the reference's checkpoint rewritten in place
    line = cli_refuses([*_train(synth_corpus, tiny_spec, tmp_path / "run", *flags, steps=4), "--resume"])
    assert "doremi_reference: the contents of" in line


def test_a_pipeline_online_doremi_arm_needs_the_doremi_section(tmp_path, tiny_spec):
    import yaml

    from mixweight.errors import MixweightError
    from mixweight.pipeline import load_pipeline_config

    arm = {"domain_weights": "online:doremi", "mixing": {"every": 2}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"train": {"model": tiny_spec}, "doremi": None, "arms": {"od": arm}}))
    with pytest.raises(MixweightError, match="reference run comes from the 'doremi' section, but that section is null"):
        load_pipeline_config(path)
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"model": tiny_spec},
                "doremi": None,
                "arms": {"od": {**arm, "mixing": {"every": 2, "doremi": {"reference": str(tmp_path)}}}},
            }
        )
    )
    own = load_pipeline_config(path).arm_config("od").mixing.options("doremi").reference
    assert own == str(tmp_path)  # its own reference: no section
