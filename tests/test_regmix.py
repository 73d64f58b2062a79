"""RegMix-style regression mixing: the fit and the optimum on exact data, then `mixweight weights regmix` end to end."""

from __future__ import annotations

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
