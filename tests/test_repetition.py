"""Repetition-aware mixtures: the KL projection onto {w_d <= E * tokens_d / T} and where it is applied."""

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
