"""Each arm against the baseline, seed by seed (mixweight/report/paired.py, cost.py): intervals, verdicts, steps
and compute to the baseline's loss, in report.json and report.md; and the pairing's premise: the arms of one seed
start from the same model and, with the same mixture, see the same batches."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats as scipy_stats

from mixweight.core.artifact import DomainWeights
from mixweight.report import compare_runs
from mixweight.report.paired import BETTER, UNCLEAR, WORSE, bootstrap_intervals, t_interval, verdict
from mixweight.train.loop import train
from mixweight.train.objective import WeightedLoss
from mixweight.train.parallel import unwrap

DOMAINS = ["a", "b"]


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    split = {d: {"documents": 1, "tokens": 100, "blocks": 1, "path": "x"} for d in DOMAINS}
    manifest = {
        "domains": DOMAINS,
        "seq_len": 8,
        "vocab_size": 16,
        "eos_id": None,
        "tokenizer": {"kind": "byte"},
        "splits": {"train": split, "val": split},
        "source": {},
        "config_hash": "h",
        "irreducible_loss": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _run(path: Path, corpus: Path, blocks: dict, seed: int, curve=(), compute=None, **config) -> Path:
    """A finished run dir: `blocks` {domain: block losses} (the domain's loss is their mean), eval records `curve`
    [(step, average)], an optional compute record."""
    path.mkdir(parents=True)
    steps = curve[-1][0] if curve else 100
    (path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "data": str(corpus),
                "out": str(path),
                "model": "gpt2-tiny",
                "steps": steps,
                "seed": seed,
                "domain_weights": "uniform",
                **config,
            }
        )  # fmt: skip
    )
    losses = {d: float(np.mean(v)) for d, v in blocks.items()}
    domains = {
        d: {"loss": losses[d], "perplexity": math.exp(losses[d]), "block_losses": list(blocks[d])} for d in blocks
    }
    worst = max(losses, key=losses.get)
    final = {"step": steps, "domains": domains, "average_loss": float(np.mean(list(losses.values()))),
             "worst_domain": worst, "worst_loss": losses[worst]}  # fmt: skip
    if compute is not None:
        final["compute"] = compute
    (path / "eval.json").write_text(json.dumps(final))
    records = [
        {"step": s, "eval": {"average_loss": avg, "domains": {d: {"loss": avg} for d in DOMAINS}}} for s, avg in curve
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_t_interval_is_students_t_over_the_seeds():
    mean, low, high = t_interval([0.1, 0.2, 0.3])
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.2) and (low, high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert half == pytest.approx(0.2484, abs=1e-4)  # t(0.975, 2) = 4.303
    assert t_interval([0.5]) == (0.5, None, None)


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(-0.3, -0.01) == BETTER and verdict(0.01, 0.2) == WORSE and verdict(-0.1, 0.1) == UNCLEAR
    assert verdict(None, None) is None


def test_bootstrap_is_seeded_and_sees_a_shift_of_every_block():
    rng = np.random.default_rng(1)
    shifted = [[rng.normal(-0.1, 0.02, 64), rng.normal(0.0, 0.02, 64)]]  # one seed: domain a better, b the same
    first = bootstrap_intervals(shifted)
    assert first == bootstrap_intervals(shifted)  # the same runs give the same interval
    (a_low, a_high), (b_low, b_high) = first[0]
    assert a_high < 0 and b_low < 0 < b_high
    assert first[1][0] < -0.05 < first[1][1]  # the average of the two domains: -0.05, its interval around it


def test_three_seeds_get_t_intervals_and_a_verdict_per_arm_and_domain(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    base_a, base_b = [2.0, 2.3, 2.1], [1.0, 1.1, 0.9]
    runs = {"uniform": [], "better": [], "mixed": []}
    for s in range(3):
        curve_base = [(50, 3.0), (100, (base_a[s] + base_b[s]) / 2)]
        runs["uniform"].append(
            _run(tmp_path / f"u{s}", corpus, {"a": [base_a[s]] * 4, "b": [base_b[s]] * 4}, s, curve_base)
        )
        # better by 0.2 on a, the same on b, every seed; reaches the baseline's loss at step 50 + 0.5 of the way
        better = {"a": [base_a[s] - 0.2] * 4, "b": [base_b[s]] * 4}
        mid = (base_a[s] + base_b[s]) / 2
        runs["better"].append(_run(tmp_path / f"b{s}", corpus, better, s, [(50, mid + 0.1), (100, mid - 0.1)]))
        noisy = {"a": [base_a[s] + [0.3, -0.3, 0.01][s]] * 4, "b": [base_b[s] + 0.05] * 4}
        runs["mixed"].append(_run(tmp_path / f"m{s}", corpus, noisy, s, [(50, 5.0), (100, 4.0)]))
    report = compare_runs(runs, tmp_path / "out")
    better, mixed = report["paired"]["better"], report["paired"]["mixed"]
    assert better["method"] == "t over seeds" and better["seeds"] == [0, 1, 2]
    assert better["domains"]["a"]["mean"] == pytest.approx(-0.2) and better["domains"]["a"]["verdict"] == BETTER
    assert better["average"]["verdict"] == BETTER and better["average"]["per_seed"] == pytest.approx([-0.1] * 3)
    b = better["domains"]["b"]
    assert (b["low"], b["high"], b["verdict"]) == (0.0, 0.0, UNCLEAR)  # no difference at all: [0, 0]
    assert mixed["domains"]["a"]["verdict"] == UNCLEAR and mixed["domains"]["b"]["verdict"] == WORSE
    assert better["steps_to_baseline"]["per_seed"] == pytest.approx([75.0] * 3)
    assert better["steps_to_baseline"]["reached"] == 3 and mixed["steps_to_baseline"]["mean"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Each arm against `uniform`, seed by seed" in md
    assert (
        "| better | 3 | t over seeds | -0.1000 [-0.1000, -0.1000] | **better** | 75.0 [75.0, 75.0] (3/3 seeds) |" in md
    )
    assert "| mixed | 3 | t over seeds |" in md and "**not distinguishable**" in md and "↑" in md


def test_one_seed_gets_a_bootstrap_interval_from_its_blocks(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(2.0, 0.3, 32), "b": rng.normal(1.0, 0.3, 32)}
    arm = {"a": base["a"] - 0.1 + rng.normal(0, 0.01, 32), "b": base["b"] + rng.normal(0, 0.01, 32)}
    runs = {"uniform": [_run(tmp_path / "u", corpus, base, 0)], "arm": [_run(tmp_path / "x", corpus, arm, 0)]}
    entry = compare_runs(runs, tmp_path / "out")["paired"]["arm"]
    assert entry["method"] == "bootstrap over seeds x validation blocks" and "1 paired seed" in entry["note"]
    assert entry["domains"]["a"]["verdict"] == BETTER and entry["domains"]["b"]["verdict"] == UNCLEAR
    assert entry["domains"]["a"]["low"] < -0.1 < entry["domains"]["a"]["high"] < 0


def test_runs_without_block_losses_have_no_interval_and_say_why(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    runs = {"uniform": [_run(tmp_path / "u", corpus, {"a": [2.0], "b": [1.0]}, 0)],
            "arm": [_run(tmp_path / "x", corpus, {"a": [1.5], "b": [1.0]}, 0)]}  # fmt: skip
    for run in (runs["uniform"][0], runs["arm"][0]):  # an older mixweight's eval.json: no block losses
        final = json.loads((run / "eval.json").read_text())
        for entry in final["domains"].values():
            del entry["block_losses"]
        (run / "eval.json").write_text(json.dumps(final))
    report = compare_runs(runs, tmp_path / "out")
    entry = report["paired"]["arm"]
    assert entry["method"] is None and entry["average"]["low"] is None and "no per-block" in entry["note"]
    assert entry["average"]["mean"] == pytest.approx(-0.25)
    assert report["compute"]["arm"]["main_flops"] is None  # no compute record either: n/a, never a guess
    assert "| arm | n/a | n/a | 0 | n/a | n/a |" in (tmp_path / "out" / "report.md").read_text()


def test_only_seeds_the_baseline_has_are_paired_in_numeric_order(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    blocks = {"a": [2.0, 2.1], "b": [1.0, 1.1]}
    runs = {"uniform": [_run(tmp_path / f"u{s}", corpus, blocks, s) for s in (10, 2)],
            "arm": [_run(tmp_path / f"x{s}", corpus, blocks, s) for s in (2, 10, 7)]}  # fmt: skip
    entry = compare_runs(runs, tmp_path / "out")["paired"]["arm"]
    assert entry["seeds"] == [2, 10] and entry["unpaired_seeds"] == [7]
    assert entry["method"] == "bootstrap over seeds x validation blocks" and entry["average"]["per_seed"] == [0.0, 0.0]


def test_compute_counts_the_weights_stage_and_the_compute_to_the_baselines_loss(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    weights = tmp_path / "w.json"
    stage = {"flops": 5e9, "runs": {"round-0/reference": 2e9, "round-0/proxy": 3e9}}
    DomainWeights(domains=DOMAINS, weights=[0.7, 0.3], method={"name": "doremi"}, compute=stage).write(weights)

    def record(per_step, model):
        return {"flops_per_step": per_step, "model_flops_per_step": model, "flops": 100 * per_step}

    runs = {"uniform": [], "doremi": []}
    for s in range(2):
        runs["uniform"].append(_run(tmp_path / f"u{s}", corpus, {"a": [2.0], "b": [1.0]}, s,
                                    [(50, 2.0), (100, 1.5)], record(1e8, 1e8)))  # fmt: skip
        runs["doremi"].append(_run(tmp_path / f"d{s}", corpus, {"a": [1.8], "b": [1.0]}, s,
                                   [(50, 1.5 + 0.1 * s), (100, 1.4)], record(1.2e8, 1e8),
                                   domain_weights=str(weights)))  # fmt: skip
    report = compare_runs(runs, tmp_path / "out")
    cost = report["compute"]["doremi"]
    assert cost["main_flops"] == pytest.approx(1.2e10) and cost["weights_flops"] == pytest.approx(5e9)
    assert cost["total_flops"] == pytest.approx(1.7e10) and cost["extra_fraction"] == pytest.approx(0.2)
    # seed 0 reaches 1.5 at step 50, seed 1 at 50 + 0.1/0.2 x 50 = 75: the weights stage + steps x FLOPs per step
    assert cost["to_baseline"]["per_seed"] == pytest.approx([5e9 + 50 * 1.2e8, 5e9 + 75 * 1.2e8])
    mean, low, high = t_interval([5e9 + 50 * 1.2e8, 5e9 + 75 * 1.2e8])
    assert (cost["to_baseline"]["low"], cost["to_baseline"]["high"]) == (pytest.approx(low), pytest.approx(high))
    assert report["compute"]["uniform"]["to_baseline"]["mean"] == pytest.approx(1e10)  # the baseline: its total
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| doremi | 1.2e+10 | +20.0% | 5e+09 (doremi) | 1.7e+10 |" in md
    assert (tmp_path / "out" / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert report["figures"]["loss_vs_flops"] == "loss_vs_flops.png"


class Recording:
    """The run's own objective, noting the model it starts from and every batch it is given."""

    def __init__(self, inner, record: dict):
        self.inner, self.record = inner, record
        record["batches"] = []

    def compute_gradients(self, model, micro_batches, step, world, autocast, lr):
        if step == 0:
            self.record["init"] = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
        self.record["batches"].append(torch.cat([mb["input_ids"] for mb in micro_batches]).clone())
        return self.inner.compute_gradients(model, micro_batches, step, world, autocast, lr)

    def __getattr__(self, attribute):
        return getattr(self.inner, attribute)


@pytest.fixture(scope="module")
def same_seed_arms(synth_corpus, tiny_spec, train_config, tmp_path_factory):
    """Two arms of one seed on the same mixture, one on the plain mean and one with LinUpper: what each saw."""
    root = tmp_path_factory.mktemp("same_seed")
    seen = {}
    for name, weighting in (("uniform", "none"), ("linupper", "linupper"), ("uniform-again", "none")):
        config = train_config(synth_corpus, tiny_spec, root / name, steps=4, batch_size=8, warmup_steps=1,
                              eval_every=0, eval_blocks=2, progress=False, domain_weights="uniform",
                              sample_weighting={"name": weighting, "warmup_steps": 0}, seed=3)  # fmt: skip
        seen[name] = {}
        train(config, Recording(WeightedLoss.from_config(config), seen[name]))
        seen[name]["eval"] = json.loads((root / name / "eval.json").read_text())
    return seen


def test_arms_of_one_seed_share_the_init_and_the_batches(same_seed_arms):
    uniform, linupper = same_seed_arms["uniform"], same_seed_arms["linupper"]
    assert uniform["init"].keys() == linupper["init"].keys()
    assert all(torch.equal(uniform["init"][k], linupper["init"][k]) for k in uniform["init"])
    assert len(uniform["batches"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(uniform["batches"], linupper["batches"]))
    assert uniform["eval"]["average_loss"] != linupper["eval"]["average_loss"]  # the weighting did differ


def test_two_arms_with_the_same_mixture_seed_and_weighting_are_bit_identical(same_seed_arms):
    first, again = same_seed_arms["uniform"]["eval"], same_seed_arms["uniform-again"]["eval"]
    assert first == again  # every loss, every block, the compute record: equal as floats, not close


def _miniature(values: dict, spec: str) -> dict:
    """configs/compare-seeds.yaml with every length shortened and the tiny model: its arms, seeds and sections."""
    short = {"batch_size": 8, "lr": 3e-3, "final_lr": 3e-4, "warmup_steps": 1, "progress": False}
    values["data"] = {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}}
    values["train"].update(model=spec, steps=6, eval_every=2, eval_blocks=4, checkpoint_every=100, **short)
    values["doremi"].update(proxy=spec, steps=4, reference_steps=4, log_every=2, train=short)
    values["doge"].update(proxy=spec, steps=4, log_every=2, train=short)
    values["regmix"].update(proxy=spec, runs=8, steps=2, token_budget=6 * 8 * 64, train=short)
    for arm in values["arms"].values():
        if "mixing" in arm:
            arm["mixing"]["every"] = 2
    return {**values, "progress": False}


@pytest.mark.slow
def test_the_compare_seeds_recipe_in_miniature_reports_every_arm_with_t_intervals_and_compute(tmp_path, tiny_spec):
    from mixweight.pipeline import run_pipeline
    from mixweight.pipeline.config import pipeline_config

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "compare-seeds.yaml").read_text())
    assert shipped["seeds"] == [0, 1, 2] and len(shipped["arms"]) == 9
    report = run_pipeline(pipeline_config(_miniature(shipped, tiny_spec), "compare-seeds"), tmp_path / "out")
    assert set(report["paired"]) == set(shipped["arms"]) - {"uniform"}
    for arm, entry in report["paired"].items():
        assert entry["method"] == "t over seeds" and entry["seeds"] == [0, 1, 2], arm
        assert entry["average"]["verdict"] in (BETTER, WORSE, UNCLEAR), arm
    compute = report["compute"]
    for arm in ("doremi", "doremi+linupper", "doge", "doge+linupper", "regmix", "online-doremi"):
        assert compute[arm]["weights_flops"] > 0 and compute[arm]["total_flops"] > compute[arm]["main_flops"], arm
    assert compute["doremi"]["weights_flops"] == compute["doremi+linupper"]["weights_flops"]  # one stage, both charged
    assert compute["uniform"]["weights_flops"] == compute["odm"]["weights_flops"] == 0.0
    assert compute["online-doremi"]["extra_fraction"] == pytest.approx(1 / 3)  # a reference forward as large
    assert (tmp_path / "out" / "report" / "loss_vs_flops.png").is_file()
