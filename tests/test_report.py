"""`mixweight.report.compare_runs`: real tiny runs for the plumbing, hand-made run dirs where the
exact numbers matter (seed aggregates, steps to target, diagnostics, errors)."""

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml

from mixweight.errors import MixweightError
from mixweight.report import compare_runs
from mixweight.report.stats import steps_to_target
from mixweight.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- real runs (built once for the module) -------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(synth_corpus, tiny_spec, tmp_path_factory, train_config):
    root = tmp_path_factory.mktemp("report_runs")
    made = {}
    for name, weighting, seed in [("uniform-s0", "none", 0), ("uniform-s1", "none", 1), ("linupper-s0", "linupper", 0)]:
        config = train_config(
            synth_corpus,
            tiny_spec,
            root / name,
            steps=9,
            batch_size=8,
            lr=3e-3,
            final_lr=3e-4,
            warmup_steps=2,
            eval_every=3,
            eval_blocks=4,
            checkpoint_every=100,
            log_every=1,
            progress=False,
            sample_weighting=weighting,
            seed=seed,
            domain_weights="uniform",
        )
        train(config)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def real_report(real_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_out")
    arms = {"uniform": [real_runs["uniform-s0"], real_runs["uniform-s1"]], "linupper": [real_runs["linupper-s0"]]}
    compare_runs(arms, out)
    return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def _eval(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


def test_report_numbers_equal_the_runs_eval_json(real_runs, real_report):
    _, report, md = real_report
    single = _eval(real_runs["linupper-s0"])
    seeds = [_eval(real_runs["uniform-s0"]), _eval(real_runs["uniform-s1"])]
    lin, uni = report["arms"]["linupper"]["final"], report["arms"]["uniform"]["final"]
    for domain, stats in single["domains"].items():
        assert lin["domains"][domain]["loss"]["mean"] == pytest.approx(stats["loss"], abs=1e-12)
        assert lin["domains"][domain]["perplexity"]["mean"] == pytest.approx(stats["perplexity"], abs=1e-9)
        assert lin["domains"][domain]["gap_to_irreducible"]["mean"] == pytest.approx(
            stats["gap_to_irreducible"], abs=1e-12
        )
        assert f"{stats['loss']:.4f}" in md
        values = [s["domains"][domain]["loss"] for s in seeds]
        assert uni["domains"][domain]["loss"]["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert uni["domains"][domain]["loss"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert lin["average_loss"]["mean"] == pytest.approx(single["average_loss"], abs=1e-12)
    assert lin["worst_loss"]["mean"] == pytest.approx(single["worst_loss"], abs=1e-12)
    assert lin["worst_domains"] == [single["worst_domain"]]
    assert f"{single['average_loss']:.4f}" in md and f"{single['average_perplexity']:.3f}" in md
    mean_avg = statistics.mean(s["average_loss"] for s in seeds)
    assert f"{mean_avg:.4f} ± {statistics.stdev(s['average_loss'] for s in seeds):.4f}" in md
    assert report["steps_to_target"]["target_average_loss"] == pytest.approx(mean_avg, abs=1e-12)
    # header says what was compared; both arms' weighting is described
    assert "uniform, linupper" in md and "3 run(s)" in md and "linupper (r=0.4)" in md
    assert report["arms"]["uniform"]["seeds"] == [0, 1]
    # the natural mixture from the manifest and the uniform mixture the arms trained on
    assert set(report["domain_weights"]) == {"natural", "uniform"}
    assert "linupper" in report["sample_weights"] and "uniform" not in report["sample_weights"]


def test_every_figure_in_report_md_is_a_png(real_report):
    out, report, md = real_report
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"validation_curves.png", "domain_weights.png", "sample_weights.png"} <= set(linked)
    assert set(linked) == set(report["figures"].values())
    for name in linked:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name


def test_list_form_labels_arms_by_directory_name(real_runs, tmp_path):
    report = compare_runs([real_runs["linupper-s0"], real_runs["uniform-s0"]], tmp_path / "out")
    assert list(report["arms"]) == ["linupper-s0", "uniform-s0"]
    assert report["baseline"] == "linupper-s0"  # no arm named uniform: the first
    relabeled = compare_runs(
        [real_runs["linupper-s0"], real_runs["uniform-s0"]], tmp_path / "out2", labels=["lin", "uniform"]
    )
    assert relabeled["baseline"] == "uniform"


# --- hand-made run dirs ----------------------------------------------------------------------

DOMAINS = ["a", "b"]


def _corpus(root: Path, config_hash: str = "h1", irreducible=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    stats = {"documents": 1, "tokens": 100, "blocks": 1, "path": "x"}
    splits = {s: {d: dict(stats, tokens=100 * (i + 1)) for i, d in enumerate(DOMAINS)} for s in ("train", "val")}
    manifest = {
        "domains": DOMAINS,
        "seq_len": 8,
        "vocab_size": 16,
        "eos_id": None,
        "tokenizer": {"kind": "byte"},
        "splits": splits,
        "source": {},
        "config_hash": config_hash,
        "irreducible_loss": irreducible or {d: None for d in DOMAINS},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _run(
    path: Path, corpus: Path, final: dict[str, float], curve=(), seed=0, weighting="none", max_w=(), ess=()
) -> Path:
    """final: {domain: loss}; curve: [(step, average_loss)] eval records; max_w/ess: per-step weight stats."""
    path.mkdir(parents=True)
    step = curve[-1][0] if curve else 10
    config = {
        "data": str(corpus),
        "out": str(path),
        "model": "gpt2-tiny",
        "steps": step,
        "seed": seed,
        "domain_weights": "uniform",
        "sample_weighting": weighting,
        "r": 0.4,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    domains = {d: {"loss": v, "perplexity": math.exp(v), "tokens": 10} for d, v in final.items()}
    worst = max(final, key=final.get)
    summary = {
        "domains": domains,
        "average_loss": sum(final.values()) / len(final),
        "average_perplexity": math.exp(sum(final.values()) / len(final)),
        "worst_domain": worst,
        "worst_loss": final[worst],
    }
    (path / "eval.json").write_text(json.dumps({"step": step, **summary}))
    records = [
        {"step": i + 1, "loss": 1.0, "weights": {"max_weight_x_n": m, "ess_fraction": e, "entropy": 0.5}, "domains": {}}
        for i, (m, e) in enumerate(zip(max_w, ess))
    ]
    for s, avg in curve:
        records.append({"step": s, "eval": {"domains": {d: {"loss": avg} for d in final}, "average_loss": avg}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    seeds = [_run(tmp_path / f"s{i}", corpus, {"a": a, "b": 1.0}, seed=i) for i, a in enumerate([1.0, 2.0, 4.0])]
    report = compare_runs({"arm": seeds}, tmp_path / "out")
    loss = report["arms"]["arm"]["final"]["domains"]["a"]["loss"]
    assert loss["mean"] == pytest.approx(7 / 3) and loss["std"] == pytest.approx(math.sqrt(7 / 3)) and loss["n"] == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "2.3333 ± 1.5275" in md and "1.0000 ± 0.0000" in md


def test_best_value_per_column_is_bold(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    runs = [
        _run(tmp_path / "uniform", corpus, {"a": 2.0, "b": 3.0}),
        _run(tmp_path / "other", corpus, {"a": 2.5, "b": 1.0}),
    ]
    compare_runs(runs, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| uniform | **2.0000** | 3.0000 | 2.5000 | 3.0000 (b) |" in md
    assert "| other | 2.5000 | **1.0000** | **1.7500** | **2.5000 (a)** |" in md


def test_steps_to_target_interpolates_and_reports_not_reached(tmp_path):
    assert steps_to_target([10, 20, 30], [2.8, 1.9, 1.5], 2.0) == pytest.approx(10 + 0.8 / 0.9 * 10)
    assert steps_to_target([10, 20], [1.0, 0.5], 2.0) == 10.0
    assert steps_to_target([10, 20], [3.0, 2.5], 2.0) is None
    corpus = _corpus(tmp_path / "corpus")
    fast = _run(tmp_path / "fast", corpus, {"a": 1.5, "b": 1.5}, curve=[(10, 2.8), (20, 1.9), (30, 1.5)])
    base = _run(tmp_path / "uniform", corpus, {"a": 2.0, "b": 2.0}, curve=[(10, 3.0), (20, 2.5), (30, 2.0)])
    slow = _run(tmp_path / "slow", corpus, {"a": 2.4, "b": 2.4}, curve=[(10, 3.2), (20, 2.9), (30, 2.4)])
    report = compare_runs([fast, base, slow], tmp_path / "out")
    speed = report["steps_to_target"]
    assert report["baseline"] == "uniform" and speed["target_average_loss"] == 2.0
    assert speed["arms"]["uniform"] == {"steps": 30.0, "per_seed_steps": [30.0], "ratio": 1.0}
    assert speed["arms"]["fast"]["steps"] == pytest.approx(18.8889, abs=1e-4)
    assert speed["arms"]["fast"]["ratio"] == pytest.approx(30 / (10 + 80 / 9))
    assert speed["arms"]["slow"]["steps"] is None and speed["arms"]["slow"]["ratio"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| fast | **18.9** | **1.588x** |" in md and "| slow | not reached | n/a |" in md
    # another baseline on request; a missing one is an error
    assert (
        compare_runs([fast, base, slow], tmp_path / "o2", baseline="slow")["steps_to_target"]["baseline_steps"] == 30.0
    )
    with pytest.raises(MixweightError, match="baseline arm 'nope'"):
        compare_runs([fast, base], tmp_path / "o3", baseline="nope")


def test_sample_weight_diagnostics_and_irreducible_gaps(tmp_path):
    corpus = _corpus(tmp_path / "corpus", irreducible={"a": 0.5, "b": None})
    lin = _run(
        tmp_path / "lin",
        corpus,
        {"a": 1.25, "b": 2.0},
        weighting="linupper",
        max_w=[1.5, 2.5, 1.0],
        ess=[0.9, 0.6, 0.75],
    )
    plain = _run(tmp_path / "uniform", corpus, {"a": 1.0, "b": 2.0}, max_w=[1.0, 1.0], ess=[1.0, 1.0])
    report = compare_runs([plain, lin], tmp_path / "out")
    diag = report["sample_weights"]
    assert list(diag) == ["lin"]
    assert diag["lin"]["mean_max_weight_x_n"] == pytest.approx(5 / 3)
    assert diag["lin"]["max_max_weight_x_n"] == 2.5 and diag["lin"]["mean_ess_fraction"] == pytest.approx(0.75)
    assert diag["lin"]["fraction_steps_above_2"] == pytest.approx(1 / 3)
    assert report["arms"]["lin"]["final"]["domains"]["a"]["gap_to_irreducible"]["mean"] == pytest.approx(0.75)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| lin | linupper | 1.6667 | 2.5000 | 0.7500 | 33.3% | 3 |" in md
    assert "Gap to the irreducible loss" in md and "a (irr. 0.5000)" in md and "b (irr." not in md


def test_domain_weights_side_by_side_with_trajectory(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    run = _run(tmp_path / "uniform", corpus, {"a": 1.0, "b": 2.0})
    weights = tmp_path / "dw.json"
    weights.write_text(
        json.dumps(
            {
                "domains": DOMAINS,
                "weights": [0.25, 0.75],
                "method": {"name": "doremi"},
                "trajectory": [
                    {"step": 0, "weights": [0.5, 0.5], "signal": [0, 0]},
                    {"step": 5, "weights": {"a": 0.25, "b": 0.75}, "signal": [0, 0]},
                ],
            }
        )
    )
    report = compare_runs([run], tmp_path / "out", weights_files={"DoReMi": weights})
    assert report["domain_weights"]["natural"]["weights"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)}
    assert report["domain_weights"]["DoReMi"]["trajectory"]["weights"] == {"a": [0.5, 0.25], "b": [0.5, 0.75]}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| a | 0.333 | 0.500 | 0.250 |" in md
    assert (tmp_path / "out" / "weights_trajectory_DoReMi.png").read_bytes().startswith(PNG_MAGIC)
    held_out = tmp_path / "doge.json"  # DoGE out-of-domain weights: the target domain is left out
    held_out.write_text(json.dumps({"weights": {"a": 1.0}, "method": {"name": "doge", "target": "b"}}))
    report = compare_runs([run], tmp_path / "out2", weights_files={"DoGE": held_out})
    assert report["domain_weights"]["DoGE"]["weights"] == {"a": 1.0, "b": 0.0}
    assert "| b | 0.667 | 0.500 | held out |" in (tmp_path / "out2" / "report.md").read_text()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"weights": {"a": 0.5, "z": 0.5}}))
    with pytest.raises(MixweightError, match=r"wrong.json: domains \['z'\] are not among"):
        compare_runs([run], tmp_path / "out3", weights_files={"x": wrong})


# --- bad input -------------------------------------------------------------------------------


def test_run_without_eval_json_is_refused(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    done = _run(tmp_path / "done", corpus, {"a": 1.0, "b": 2.0})
    unfinished = _run(tmp_path / "unfinished", corpus, {"a": 1.0, "b": 2.0})
    (unfinished / "eval.json").unlink()
    with pytest.raises(MixweightError, match=r"unfinished: no eval.json.*not finished.*--resume continues it"):
        compare_runs([done, unfinished], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_runs_on_different_corpora_are_refused(tmp_path):
    one = _run(tmp_path / "one", _corpus(tmp_path / "c1", "h1"), {"a": 1.0, "b": 2.0})
    two = _run(tmp_path / "two", _corpus(tmp_path / "c2", "h2"), {"a": 1.0, "b": 2.0})
    with pytest.raises(MixweightError, match=r"different corpora: .*one.*h1.*two.*h2"):
        compare_runs([one, two], tmp_path / "out")
    three = _run(tmp_path / "three", tmp_path / "c1", {"a": 1.0, "c": 2.0})
    with pytest.raises(MixweightError, match=r"different domains: .*one.*\['a', 'b'\].*three.*\['a', 'c'\]"):
        compare_runs([one, three], tmp_path / "out")
    with pytest.raises(MixweightError, match=r"corpus .*c2.*h2.*not the corpus"):
        compare_runs([one], tmp_path / "out", corpus=tmp_path / "c2")
    assert compare_runs([one], tmp_path / "out", corpus=tmp_path / "c1")["corpus"]["config_hash"] == "h1"
