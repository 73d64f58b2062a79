"""RegMix at real scale, the fit side: the power law and the Huber fit on exact data, `auto`, and a swarm trained
elsewhere (`--swarm-table`, RegMix's and olmix's CSV layouts), fitted, mapped to a corpus and verified."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mixweight.domain.mixing_laws import EPS, LogLinear, PowerLogLinear
from mixweight.domain.regmix import optimise, resolve_regressor, sample_mixtures
from mixweight.errors import MixweightError

PRIOR = np.array([0.4, 0.3, 0.2, 0.1])
POWER = {"c": 1.5, "k": 0.8, "t": [-0.6, 0.2, 0.3, 0.1], "s": [-0.12, -0.03, -0.05, 0.02]}


def power_losses(x: np.ndarray, law: dict = POWER) -> np.ndarray:
    """The law written from its formula: c + k exp(t . r) prod_j (r_j + EPS)^s_j."""
    x = np.atleast_2d(x)
    return law["c"] + law["k"] * np.exp(x @ np.array(law["t"])) * np.prod((x + EPS) ** np.array(law["s"]), axis=1)


# --- the laws and their fit ------------------------------------------------------------------------------
def test_the_power_law_is_recovered_from_exact_data_and_predicts_unseen_mixtures():
    x = sample_mixtures(PRIOR, 60, 1.0, seed=0)
    model = PowerLogLinear("least_squares").fit(x, power_losses(x)[:, None])
    law = model.params[0]
    assert law["c"] == pytest.approx(POWER["c"], abs=1e-5) and law["s"] == pytest.approx(POWER["s"], abs=1e-5)
    t = np.array(POWER["t"]) - np.mean(POWER["t"])  # the fit keeps t centred, k absorbing the mean
    assert law["t"] == pytest.approx(t.tolist(), abs=1e-5)
    assert law["k"] == pytest.approx(POWER["k"] * np.exp(np.mean(POWER["t"])), rel=1e-5)
    unseen = sample_mixtures(PRIOR, 80, 1.0, seed=7)[60:]
    assert np.allclose(model.predict(unseen), power_losses(unseen), atol=1e-6)
    r = np.array([0.3, 0.3, 0.2, 0.2])
    step = 1e-6  # the gradient the optimiser follows is the law's own
    numeric = [(model.predict(r + step * e)[0] - model.predict(r - step * e)[0]) / (2 * step) for e in np.eye(4)]
    assert model.gradient(r) == pytest.approx(numeric, rel=1e-5)


def test_the_power_laws_optimum_matches_a_brute_force_grid():
    x = sample_mixtures(PRIOR[:3] / PRIOR[:3].sum(), 40, 1.0, seed=1)
    law = {"c": 1.0, "k": 1.0, "t": [0.5, -0.2, 0.1], "s": [-0.05, -0.1, 0.03]}
    model = PowerLogLinear().fit(x, power_losses(x, law)[:, None])
    grid = np.linspace(0, 1, 401)
    points = np.array([[a, b, 1 - a - b] for a in grid for b in grid if a + b <= 1 + 1e-12]).clip(0, None)
    best = power_losses(points, law).min()
    chosen = optimise(model, PRIOR[:3] / PRIOR[:3].sum(), kl_reg=0.0)
    assert power_losses(chosen, law)[0] <= best + 1e-6


def test_a_huber_fit_shrugs_off_one_wild_run_that_moves_least_squares():
    x = sample_mixtures(PRIOR, 40, 1.0, seed=2)
    law = {"c": 2.0, "k": 1.0, "t": [-1.0, 0.5, 0.3, 0.2]}
    y = law["c"] + law["k"] * np.exp(x @ np.array(law["t"]))
    y[5] += 0.5  # one diverged-ish run
    unseen = sample_mixtures(PRIOR, 60, 1.0, seed=3)[40:]
    truth = law["c"] + law["k"] * np.exp(unseen @ np.array(law["t"]))
    errors = {}
    for loss in ("least_squares", "huber"):
        model = LogLinear(loss, delta=0.02).fit(x, y[:, None])
        errors[loss] = np.abs(model.predict(unseen) - truth).max()
    assert errors["huber"] < 0.01 < errors["least_squares"]


def test_the_floor_is_free_and_an_old_artifacts_fit_keeps_it_under_the_lowest_loss():
    """Noisy runs near a law's floor: the free fit puts c where the law is (above the lowest, noisy, loss); the
    fit of artifacts from before `fit.loss` was recorded held c <= min(y)."""
    x = sample_mixtures(PRIOR, 60, 1.0, seed=4)
    law = {"c": 3.0, "k": 0.5, "t": [-2.0, 1.0, 0.6, 0.4]}
    y = law["c"] + law["k"] * np.exp(x @ np.array(law["t"])) + np.random.default_rng(0).normal(0, 0.03, 60)
    free = LogLinear("least_squares").fit(x, y[:, None]).params[0]["c"]
    bounded = LogLinear("least_squares")
    bounded.floor_at_min = True
    assert free > y.min() and bounded.fit(x, y[:, None]).params[0]["c"] <= y.min()


def test_auto_takes_the_power_law_once_the_swarm_has_three_runs_per_parameter():
    assert resolve_regressor("auto", 3 * (2 * 4 + 1), 4) == "power"
    assert resolve_regressor("auto", 3 * (2 * 4 + 1) - 1, 4) == "loglinear"
    assert resolve_regressor("lightgbm", 5, 4) == "lightgbm"
    assert resolve_regressor("auto", 512, 17) == "power"  # RegMix's swarm


def test_fit_options_are_checked_when_the_config_is_read():
    from mixweight.domain.regmix_config import RegMixConfig

    with pytest.raises(MixweightError, match="unknown 'fit_loss' 'hubr'; did you mean 'huber'"):
        RegMixConfig(data="c", out="w.json", fit_loss="hubr").validate()
    with pytest.raises(MixweightError, match="'huber_delta' must be > 0"):
        RegMixConfig(data="c", out="w.json", huber_delta=0.0).validate()
    config = RegMixConfig(data="c", out="w.json", token_budget=1000)
    config.validate()
    assert config.max_epochs == 4.0 and config.kl_reg == 0.05 and config.regressor == "auto"  # olmix's defaults


# --- swarm tables ----------------------------------------------------------------------------------------
DOMAINS = ["arxiv", "pile_cc", "github", "wiki"]


def write_csv(path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def regmix_table(tmp_path, runs: int = 40, prefix: str = "the_pile_", names=DOMAINS) -> tuple[str, str]:
    """RegMix's layout: index + train_<domain> (rounded to 3 decimals, as published), index +
    metric/<domain>_val_loss, from a power law per evaluated domain."""
    x = sample_mixtures(PRIOR, runs, 1.0, seed=5)
    x = np.round(x, 3)
    mix = write_csv(
        tmp_path / "train_mixture.csv",
        ["index", *[f"train_{prefix}{d}" for d in names]],
        [[i + 1, *row] for i, row in enumerate(x.tolist())],
    )
    evaluated = names[:3]
    losses = np.column_stack([power_losses(x, {**POWER, "c": 1.0 + j}) for j in range(3)])
    loss = write_csv(
        tmp_path / "train_loss.csv",
        ["index", *[f"metric/{prefix}{d}_val_loss" for d in evaluated]],
        [[i + 1, *row] for i, row in enumerate(losses.tolist())],
    )
    return mix, loss


def table_argv(mix, loss, out, *extra) -> list[str]:
    return ["weights", "regmix", "--swarm-table", str(mix), str(loss), "--out", str(out), *map(str, extra)]


def test_a_regmix_layout_table_without_data_names_its_domains_and_verifies(tmp_path, capsys):
    from mixweight.cli import main

    mix, loss = regmix_table(tmp_path)
    out = tmp_path / "w.json"
    main(table_argv(mix, loss, out, "--target", "the_pile_pile_cc"))
    raw = json.loads(out.read_text())
    assert raw["domains"] == [f"the_pile_{d}" for d in DOMAINS] and "targets" not in raw  # pile_cc is trained on
    method = raw["method"]
    assert method["source"]["layout"] == "regmix" and method["runs"] == 40 and method["fit"]["regressor"] == "power"
    assert method["fit"]["loss"] == "huber" and method["fit"]["huber_delta"] == 0.02 and method["kl_reg"] == 0.05
    assert method["fit"]["target_domains"] == ["the_pile_pile_cc"]
    assert method["swarm"][0]["run"] == "1" and set(method["swarm"][0]["losses"]) == {
        f"the_pile_{d}" for d in DOMAINS[:3]
    }
    assert raw["provenance"]["swarm_table"]["mixtures"]["file"] == "train_mixture.csv"
    prior = np.array(list(method["prior_weights"].values()))  # no corpus: the table's mean mixture
    table_x = np.array([list(run["weights"].values()) for run in method["swarm"]])
    assert prior == pytest.approx(table_x.mean(axis=0))
    capsys.readouterr()
    main(["weights", "verify", str(out)])
    assert "refitted 40 regmix swarm runs (power); the recorded weights match" in capsys.readouterr().out


def test_an_olmix_layout_table_fits_metrics_that_are_no_domain(tmp_path, capsys):
    from mixweight.cli import main

    x = sample_mixtures(PRIOR, 30, 1.0, seed=6)
    ids = [f"run-{i:02d}-abc" for i in range(30)]
    mix = write_csv(
        tmp_path / "ratios.csv",
        ["run", "name", "index", *DOMAINS],
        [[r, f"swarm/{r}", i, *row] for i, (r, row) in enumerate(zip(ids, x.tolist()))],
    )
    bpb = np.column_stack([power_losses(x, {**POWER, "c": 0.7}), power_losses(x, {**POWER, "c": 0.9, "s": [0] * 4})])
    order = list(reversed(range(30)))  # another row order: the rows are joined on run
    loss = write_csv(
        tmp_path / "metrics.csv", ["run", "name", "arc_easy_bpb", "mbpp_bpb"], [[ids[i], "", *bpb[i]] for i in order]
    )
    out = tmp_path / "w.json"
    main(table_argv(mix, loss, out))
    raw = json.loads(out.read_text())
    method = raw["method"]
    assert raw["domains"] == DOMAINS and method["source"]["layout"] == "olmix"
    assert method["fit"]["target_domains"] == ["arc_easy_bpb", "mbpp_bpb"]
    assert method["swarm"][3]["run"] == ids[3] and method["swarm"][3]["losses"]["mbpp_bpb"] == pytest.approx(bpb[3, 1])
    capsys.readouterr()
    main(["weights", "verify", str(out)])
    assert "the recorded weights match" in capsys.readouterr().out


def test_with_data_the_tables_names_map_to_the_corpus_and_one_that_maps_to_nothing_is_refused(
    synth_corpus, tmp_path, cli_refuses, capsys
):
    from mixweight.cli import main
    from mixweight.data.manifest import load_manifest

    corpus = load_manifest(synth_corpus).domains
    names = ["Redundant", "markov-2", "arithmetic", "copy"]  # case, punctuation and the prefix are ignored
    mix, loss = regmix_table(tmp_path, names=names)
    out = tmp_path / "w.json"
    main(table_argv(mix, loss, out, "--data", synth_corpus, "--target", "redundant,markov2"))
    raw = json.loads(out.read_text())
    assert raw["domains"] == corpus and raw["method"]["fit"]["target_domains"] == ["redundant", "markov2"]
    weights = dict(zip(raw["domains"], raw["weights"]))
    assert all(weights[d] == 0.0 for d in ("noise", "unigram", "markov1"))  # no column in the table
    assert raw["method"]["source"]["domain_map"] == {
        "the_pile_Redundant": "redundant",  # the table's common prefix is dropped
        "the_pile_markov-2": "markov2",
        "the_pile_arithmetic": "arithmetic",
        "the_pile_copy": "copy",
    }
    assert raw["provenance"]["corpus_config_hash"] == load_manifest(synth_corpus).config_hash
    assert "corpus domains ['noise', 'unigram', 'markov1'] have no column in the table" in capsys.readouterr().err
    main(["weights", "verify", str(out)])

    bogus, bogus_loss = regmix_table(tmp_path, prefix="", names=["redundant", "markov2", "arithmetik2", "cpy"])
    message = cli_refuses(table_argv(bogus, bogus_loss, tmp_path / "x.json", "--data", synth_corpus))
    assert "swarm table domain 'arithmetik2'" in message and "maps to no domain of the corpus" in message
    assert "did you mean 'arithmetic'" in message and "--domain-map arithmetik2=DOMAIN" in message
    mapped = tmp_path / "mapped.json"
    main(
        table_argv(bogus, bogus_loss, mapped, "--data", synth_corpus, "--domain-map", "arithmetik2=arithmetic,cpy=copy")
    )
    assert json.loads(mapped.read_text())["method"]["source"]["domain_map"] == {
        "arithmetik2": "arithmetic",
        "cpy": "copy",
    }
    capsys.readouterr()
    twice = table_argv(
        bogus, bogus_loss, tmp_path / "y.json", "--data", synth_corpus, "--domain-map", "arithmetik2=copy,cpy=copy"
    )
    assert "map to the same corpus domain" in cli_refuses(twice)
    assert "--domain-map names ['arithmetc']" in cli_refuses(
        table_argv(mix, loss, tmp_path / "z.json", "--data", synth_corpus, "--domain-map", "arithmetc=copy")
    )
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[3].__setitem__(2, "0.9"), r"train_mixture.csv: run 3: its weights sum to 1\.4"),
        (lambda rows: rows[2].__setitem__(1, "lots"), r"run 2, column 'train_the_pile_arxiv': 'lots' is not a finite"),
        (lambda rows: rows[0].__setitem__(0, "runid"), r"share no column to join their rows on"),
        (lambda rows: rows[4].__setitem__(0, "3"), r"index '3' is empty or appears twice"),
    ],
    ids=["row sum", "text weight", "no join column", "index twice"],
)
def test_a_broken_table_is_one_line_naming_the_file_row_and_column(tmp_path, cli_refuses, edit, message):
    import re

    mix, loss = regmix_table(tmp_path)
    rows = list(csv.reader(open(mix)))
    edit(rows)
    write_csv(mix, rows[0], rows[1:])
    refused = cli_refuses(table_argv(mix, loss, tmp_path / "w.json"))
    assert re.search(message, refused) and not (tmp_path / "w.json").exists()


def test_runs_without_a_losses_row_or_a_target_loss_are_left_out_and_named(tmp_path, capsys):
    from mixweight.cli import main

    mix, loss = regmix_table(tmp_path)
    rows = list(csv.reader(open(loss)))
    rows[5][1] = ""  # run 5: the arxiv loss is missing
    del rows[7]  # run 7 never reported
    write_csv(loss, rows[0], rows[1:])
    out = tmp_path / "w.json"
    main(table_argv(mix, loss, out, "--target", "the_pile_arxiv"))
    method = json.loads(out.read_text())["method"]
    assert method["runs"] == 38 and method["source"]["left_out"] == {
        "no_losses_row": ["7"],
        "missing_target_loss": ["5"],
    }
    err = capsys.readouterr().err
    assert "1 mixture rows have no losses row" in err and "1 runs lack a target loss, left out: 5" in err
    main(table_argv(mix, loss, tmp_path / "v.json", "--target", "the_pile_pile_cc"))  # run 5 counts for this target
    assert json.loads((tmp_path / "v.json").read_text())["method"]["runs"] == 39


def test_table_options_that_belong_to_a_trained_swarm_are_refused(tmp_path, cli_refuses):
    mix, loss = regmix_table(tmp_path)
    assert "--plan belong to a swarm mixweight trains" in cli_refuses(
        table_argv(mix, loss, tmp_path / "w", "--plan", "d")
    )
    assert "need --data" in cli_refuses(table_argv(mix, loss, tmp_path / "w", "--token-budget", "1000"))
    assert "no loss column of the swarm table" in cli_refuses(table_argv(mix, loss, tmp_path / "w", "--target", "wiki"))
    assert "--data is required" in cli_refuses(["weights", "regmix", "--out", str(tmp_path / "w.json")])


def test_a_pipeline_regmix_section_can_fit_a_table_for_its_corpus(tmp_path):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    mix, loss = regmix_table(tmp_path, names=["redundant", "markov2", "arithmetic", "copy"])
    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": "gpt2-micro", "steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_blocks": 2},
        "doremi": None,
        "doge": None,
        "regmix": {"swarm_table": [mix, loss], "target": "redundant"},
        "arms": {"regmix": {"domain_weights": "regmix"}},
        "progress": False,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run_pipeline(load_pipeline_config(path), out)
    weights = json.loads((out / "weights" / "regmix" / "domain_weights.json").read_text())
    assert weights["method"]["source"]["layout"] == "regmix" and len(weights["domains"]) == 7
    assert (out / "runs" / "regmix-seed0" / "eval.json").is_file()
    rows = list(csv.reader(open(loss)))  # the table's content is part of the stage: an edit reruns it
    rows[1][1] = str(float(rows[1][1]) + 0.5)
    write_csv(loss, rows[0], rows[1:])
    with pytest.raises(MixweightError, match="weights regmix"):
        run_pipeline(load_pipeline_config(path), out)
