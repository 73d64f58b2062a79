"""Repetition-aware mixtures: the KL projection onto {w_d <= E * tokens_d / T} and where it is applied."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from mixweight.errors import MixweightError
from mixweight.sampling.repetition import planned_epochs, project_max_epochs

DOMAINS = ["a", "b", "c"]


def test_weights_within_the_cap_are_left_alone():
    p = project_max_epochs(DOMAINS, [0.5, 0.3, 0.2], [1000, 1000, 1000], max_epochs=2, token_budget=1000)
    assert p.after == pytest.approx([0.5, 0.3, 0.2]) and p.capped == [] and not p.changed
    assert "weights unchanged" in p.summary()


def test_one_domain_over_its_cap_is_clipped_and_the_rest_scaled_by_hand():
    # T = 1000, E = 1: caps are tokens / 1000 = [0.2, 1, 1]; a at 0.5 -> 0.2, b and c share 0.8 in ratio 3:2
    p = project_max_epochs(DOMAINS, [0.5, 0.3, 0.2], [200, 1000, 1000], max_epochs=1, token_budget=1000)
    assert p.after == pytest.approx([0.2, 0.48, 0.32])
    assert p.capped == ["a"]
    assert p.epochs(p.before)[0] == pytest.approx(2.5) and p.epochs(p.after)[0] == pytest.approx(1.0)
    assert "a 0.5000->0.2000 (2.5->1 epochs)" in p.summary() and "x1.6" in p.summary()


def test_a_scaled_domain_that_then_crosses_its_cap_is_clipped_in_a_second_round():
    # caps [0.1, 0.35, 1]: a clipped first, b then scaled past 0.35 and clipped too, c takes the rest
    p = project_max_epochs(DOMAINS, [0.6, 0.3, 0.1], [100, 350, 1000], max_epochs=1, token_budget=1000)
    assert p.after == pytest.approx([0.1, 0.35, 0.55])
    assert p.capped == ["a", "b"]


def test_a_domain_at_weight_zero_stays_at_zero():
    p = project_max_epochs(DOMAINS, [0.7, 0.3, 0.0], [500, 600, 10**6], max_epochs=1, token_budget=1000)
    assert p.after[2] == 0.0 and p.after == pytest.approx([0.5, 0.5, 0.0])


def test_a_budget_no_mixture_can_meet_is_refused_with_the_numbers():
    with pytest.raises(MixweightError) as info:
        project_max_epochs(DOMAINS, [0.4, 0.3, 0.3], [100, 200, 300], max_epochs=1, token_budget=1000)
    message = str(info.value)
    assert "1,000 tokens" in message and "0.6" in message and "raise max_epochs to at least 1.667" in message
    assert "\n" not in message


def test_the_support_must_hold_the_budget_even_when_all_domains_could():
    with pytest.raises(MixweightError, match="give the others weight > 0"):
        project_max_epochs(DOMAINS, [0.5, 0.5, 0.0], [100, 100, 10**6], max_epochs=1, token_budget=1000)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_max_epochs_must_be_a_positive_finite_number(bad):
    with pytest.raises(MixweightError, match="max_epochs"):
        project_max_epochs(DOMAINS, [0.5, 0.3, 0.2], [1, 1, 1], max_epochs=bad, token_budget=1)


@pytest.mark.parametrize("seed", range(5))
def test_the_projection_is_the_kl_optimum_scipy_finds(seed):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(5) * 0.5)
    w = np.maximum(w, 1e-3)
    w /= w.sum()
    tokens = rng.integers(100, 2000, size=5)
    budget = float(tokens.sum()) * 0.9  # some domains must be capped at E = 1
    p = project_max_epochs(list("vwxyz"), w.tolist(), tokens.tolist(), max_epochs=1, token_budget=budget)
    caps = np.array(p.caps)

    def kl(v):
        v = np.maximum(v, 1e-15)
        return float(np.sum(v * np.log(v / w)))

    best = minimize(
        kl,
        np.minimum(w, caps) / np.minimum(w, caps).sum(),
        method="SLSQP",
        bounds=[(0, c) for c in caps],
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert np.all(np.array(p.after) <= caps + 1e-12) and sum(p.after) == pytest.approx(1.0)
    assert kl(np.array(p.after)) <= kl(best.x) + 1e-9
    assert np.allclose(p.after, best.x, atol=1e-4)


def test_planned_epochs():
    assert planned_epochs({"a": 0.5, "b": 0.5}, {"a": 100, "b": 1000}, 400) == {"a": 2.0, "b": 0.2}


# --- on `mixweight train` --------------------------------------------------------------------
def _train_argv(corpus, spec, out, *extra) -> list[str]:
    args = "--steps 3 --batch-size 8 --warmup-steps 1 --eval-every 0 --eval-blocks 2 --no-progress"
    return ["train", "--data", corpus, "--model", spec, "--out", str(out), *args.split(), *extra]


def test_train_caps_a_domain_past_max_epochs_and_records_it(synth_corpus, tiny_spec, tmp_path, capsys):
    from mixweight.cli import main
    from mixweight.data.manifest import load_manifest

    manifest = load_manifest(synth_corpus)
    domains = manifest.domains
    weights = {d: 0.05 for d in domains}
    weights[domains[0]] = 1 - 0.05 * (len(domains) - 1)  # 0.7 of the budget on the first domain
    file = tmp_path / "w.json"
    file.write_text(json.dumps({"weights": weights}))
    tokens = manifest.splits["train"][domains[0]].tokens
    budget = 3 * 8 * manifest.seq_len  # steps x global batch x seq_len
    max_epochs = 0.3 * budget / tokens  # the first domain may hold 0.3 of the budget
    main(
        _train_argv(
            synth_corpus, tiny_spec, tmp_path / "run", "--domain-weights", str(file), "--max-epochs", str(max_epochs)
        )
    )
    out = capsys.readouterr().out
    assert f"capped {domains[0]} 0.7000->0.3000" in out
    record = json.loads((tmp_path / "run" / "repetition.json").read_text())
    assert record["token_budget"] == budget and record["max_epochs"] == pytest.approx(max_epochs)
    assert record["phases"][0]["capped"] == [domains[0]]
    assert record["phases"][0]["weights_after"][domains[1]] == pytest.approx(0.05 * 0.7 / 0.3)
    assert record["planned_epochs"][domains[0]] == pytest.approx(max_epochs)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    target = next(m for m in metrics if "mixture" in m)["mixture"]["domains"][domains[0]]["target"]
    assert target == pytest.approx(0.3)  # the loader samples the capped weights


def test_train_without_max_epochs_records_the_planned_epochs(synth_corpus, tiny_spec, tmp_path):
    from mixweight.cli import main
    from mixweight.data.manifest import load_manifest

    main(_train_argv(synth_corpus, tiny_spec, tmp_path / "run", "--domain-weights", "uniform"))
    manifest = load_manifest(synth_corpus)
    record = json.loads((tmp_path / "run" / "repetition.json").read_text())
    d = manifest.domains[0]
    expected = (1 / len(manifest.domains)) * 3 * 8 * manifest.seq_len / manifest.splits["train"][d].tokens
    assert record["max_epochs"] is None and record["phases"] == []
    assert record["planned_epochs"][d] == pytest.approx(expected)


def test_train_refuses_a_budget_no_mixture_can_meet_before_writing(synth_corpus, tiny_spec, tmp_path, cli_refuses):
    from mixweight.data.manifest import load_manifest

    manifest = load_manifest(synth_corpus)
    total = sum(manifest.train_tokens().values())
    steps = total // (8 * manifest.seq_len) * 2  # twice the corpus
    argv = _train_argv(synth_corpus, tiny_spec, tmp_path / "run", "--max-epochs", "1")
    argv[argv.index("--steps") + 1] = str(steps)
    message = cli_refuses(argv)
    assert "no mixture fits a budget of" in message and "raise max_epochs to at least 2" in message
    assert not (tmp_path / "run").exists()


def test_export_caps_to_a_token_budget(tmp_path, capsys):
    from mixweight.cli import main

    file = tmp_path / "w.json"
    file.write_text(
        json.dumps(
            {
                "domains": ["a", "b"],
                "weights": [0.8, 0.2],
                "provenance": {"domain_token_counts": {"a": 100, "b": 1000}},
            }
        )
    )
    main(["weights", "export", str(file), "--format", "json", "--token-budget", "250", "--max-epochs", "2"])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == pytest.approx({"a": 0.8, "b": 0.2})  # 0.8 x 250 / 100 = 2 epochs: at the cap
    main(["weights", "export", str(file), "--format", "json", "--token-budget", "500", "--max-epochs", "2"])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == pytest.approx({"a": 0.4, "b": 0.6})
    assert "capped a 0.8000->0.4000 (4->2 epochs)" in captured.err
    main(["weights", "export", str(file), "--format", "json", "--token-budget", "500"])  # epochs only, no cap
    captured = capsys.readouterr()
    assert json.loads(captured.out) == pytest.approx({"a": 0.8, "b": 0.2})
    assert "planned epochs over 500 tokens: a 4, b 0.1" in captured.err


def test_export_refusals(tmp_path, cli_refuses):
    file = tmp_path / "w.json"
    file.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}}))
    base = ["weights", "export", str(file), "--format", "json"]
    assert "needs --token-budget" in cli_refuses([*base, "--max-epochs", "2"])
    assert "domain_token_counts" in cli_refuses([*base, "--token-budget", "10", "--max-epochs", "2"])
    file.write_text(
        json.dumps({"weights": {"a": 0.5, "b": 0.5}, "provenance": {"domain_token_counts": {"a": 1, "b": 1}}})
    )
    assert "no mixture fits" in cli_refuses([*base, "--token-budget", "10", "--max-epochs", "2"])
