"""Regression mixing (RegMix; Data Mixing Laws): fit validation loss as a function of the mixture, then minimise it.

Pure numpy/scipy functions; no training, no files (the swarm that produces the data is
`mixweight.domain.regmix_run`, the artifact `regmix_fit`). docs/algorithms.md section 5 has the formulas and the
choices.

- `sample_mixtures(prior, k, concentration, seed)`: the swarm's mixtures. Row 0 is the prior,
  row 1 uniform, row i >= 2 a Dirichlet draw centred on the prior, alpha = A * s_i * m * prior
  with s_i log-uniform in [0.1, 5] (RegMix's range of scales: small s gives sparse mixtures;
  when the prior is uniform, row 1 is a draw too);
  row i depends only on (seed, i), so a larger swarm extends a smaller one.
- the regressors (`make_regressor`): the parametric laws of `mixing_laws` (`loglinear`: Ye et al.'s
  L_i(r) = c_i + k_i exp(t_i . r); `power`: the same times prod_j (r_j + eps)^s_ij), fitted by least squares
  or Huber; `lightgbm`: LightGBM on the target loss directly (RegMix), the `regmix` extra; `auto` (the
  default) is `power` when the swarm holds RUNS_PER_PARAMETER runs per parameter of its law, else `loglinear`.
- `cross_validate(...)`: leave-one-out (or K-fold above MAX_LOO runs) predictions of the
  target loss, their Spearman rank correlation and mean absolute error against the observed.
- `optimise(model, ...)`: the mixture of lowest predicted target loss within per-domain caps
  (the repetition cap), plus an optional KL pull toward the prior (olmix's kl_reg):
  loglinear with SLSQP from several deterministic starts; lightgbm by RegMix's search (score
  many sampled mixtures, average the best TOP_K).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

from mixweight.domain.mixing_laws import FIT_LOSSES, HUBER_DELTA, LogLinear, PowerLogLinear
from mixweight.errors import MixweightError, did_you_mean

REGRESSORS = ("auto", "loglinear", "power", "lightgbm")
LAWS = {"loglinear": LogLinear, "power": PowerLogLinear}
# Runs per parameter of a law below which its fit nearly interpolates the swarm: on the synthetic corpus such fits
# ranked unseen mixtures poorly while their leave-one-out Spearman looked good (benchmarks/RESULTS.md,
# regmix_rank.py). `auto` takes the richer law only above it; below it a log-linear artifact warns.
RUNS_PER_PARAMETER = 3
SCALE_RANGE = (0.1, 5.0)  # RegMix's Dirichlet scales: from near one-hot to close to the prior
MAX_LOO = 64  # leave-one-out up to this many runs, K-fold above
FOLDS = 10
SEARCH_SAMPLES = 20000  # lightgbm: mixtures scored by the simulated search
TOP_K = 100  # lightgbm: the best this many are averaged
ZERO_BELOW = 1e-9  # weights of the optimum below this are set to 0
LIGHTGBM_MISSING = (
    "weights regmix: --regressor lightgbm needs LightGBM, which is not installed; "
    'pip install -e ".[regmix]" (or pip install lightgbm), or use --regressor loglinear'
)


def check_regressor(name: str) -> str:
    if name not in REGRESSORS:
        raise MixweightError(
            f"weights regmix: unknown --regressor {name!r}; {did_you_mean(name, REGRESSORS)}"
            f"valid regressors: {', '.join(REGRESSORS)}"
        )
    return name


def require_lightgbm() -> None:
    """LightGBM importable, else the one-line MixweightError naming the extra."""
    _lightgbm()


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise MixweightError(LIGHTGBM_MISSING) from None
    return lightgbm


# --- the swarm's mixtures ----------------------------------------------------------------
def sample_mixtures(prior: np.ndarray, k: int, concentration: float, seed: int, round_to: int = 6) -> np.ndarray:
    """[k, m] mixtures: the prior, uniform, then Dirichlet draws centred on the prior (module docstring).

    Weights below 1e-3 are set to 0 (a stream that would get a handful of samples), and every row
    is rounded to `round_to` digits and renormalised, so the weights written for a run are the
    weights it samples.
    """
    prior = np.asarray(prior, dtype=np.float64)
    m = len(prior)
    uniform = np.full(m, 1.0 / m)
    rows = [prior] if np.allclose(prior, uniform, rtol=0, atol=1e-6) else [prior, uniform]  # no run twice
    lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
    for i in range(len(rows), k):
        rng = np.random.default_rng([seed, i])
        scale = math.exp(rng.uniform(lo, hi))
        alpha = np.maximum(concentration * scale * m * prior, 1e-6)
        rows.append(rng.dirichlet(alpha))
    out = []
    for row in rows[:k]:
        row = np.where(row < 1e-3, 0.0, row)
        if row.sum() <= 0:
            row = np.eye(m)[int(np.argmax(rows[0]))]
        row = np.round(row / row.sum(), round_to)
        out.append(row / row.sum())
    return np.array(out)


# --- the regressors ----------------------------------------------------------------------------
class GradientBoosting:
    """LightGBM regression of the mean target loss on the mixture (RegMix's regressor)."""

    name = "lightgbm"

    def __init__(self, seed: int):
        self.seed = seed
        self.model = None

    def fit(self, x: np.ndarray, y_by_domain: np.ndarray) -> "GradientBoosting":
        lightgbm = _lightgbm()
        # Small swarms: leaves of a few runs, or no tree could split 24 samples at LightGBM's default of 20.
        self.model = lightgbm.LGBMRegressor(
            n_estimators=300,
            learning_rate=0.05,
            num_leaves=8,
            min_child_samples=2,
            min_data_in_bin=1,
            subsample=1.0,
            colsample_bytree=1.0,
            random_state=self.seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
        self.model.fit(x, y_by_domain.mean(axis=1))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.atleast_2d(x)), dtype=np.float64)


def resolve_regressor(name: str, runs: int, m: int) -> str:
    """`auto` -> `power` when `runs` >= RUNS_PER_PARAMETER x its parameters (2m + 1 over m training domains),
    else `loglinear`; any other name as it is."""
    check_regressor(name)
    if name != "auto":
        return name
    return "power" if runs >= RUNS_PER_PARAMETER * PowerLogLinear().parameter_count(m) else "loglinear"


def make_regressor(name: str, seed: int, loss: str = "huber", delta: float = HUBER_DELTA, floor_at_min=False):
    """A regressor by (resolved) name; `loss`, `delta` and `floor_at_min` shape a law's fit (mixing_laws)."""
    check_regressor(name)
    if name == "lightgbm":
        return GradientBoosting(seed)
    if name not in LAWS:
        raise ValueError(f"make_regressor: resolve {name!r} first (resolve_regressor)")
    law = LAWS[name](loss, delta)
    law.floor_at_min = floor_at_min
    return law


def check_fit_loss(loss: str, delta: float) -> None:
    if loss not in FIT_LOSSES:
        raise MixweightError(
            f"weights regmix: unknown 'fit_loss' {loss!r}; {did_you_mean(loss, FIT_LOSSES)}"
            f"valid: {', '.join(FIT_LOSSES)}"
        )
    if not (delta > 0 and math.isfinite(delta)):
        raise MixweightError(f"weights regmix: 'huber_delta' must be > 0 (nats), got {delta}")


# --- fit quality ---------------------------------------------------------------------------
def cross_validate(name: str, x: np.ndarray, y_by_domain: np.ndarray, seed: int, **fit) -> dict:
    """Held-out predictions of the target loss: leave-one-out up to MAX_LOO runs, else FOLDS-fold (seeded);
    `fit`: make_regressor's loss, delta and floor_at_min."""
    k = len(x)
    if k <= MAX_LOO:
        folds, method = [[i] for i in range(k)], "leave-one-out"
    else:
        order = np.random.default_rng(seed).permutation(k)
        folds, method = [sorted(order[f::FOLDS].tolist()) for f in range(FOLDS)], f"{FOLDS}-fold"
    predicted = np.zeros(k)
    for held in folds:
        keep = np.setdiff1d(np.arange(k), held)
        model = make_regressor(name, seed, **fit).fit(x[keep], y_by_domain[keep])
        predicted[held] = model.predict(x[held])
    observed = y_by_domain.mean(axis=1)
    return {"method": method, "predicted": predicted.tolist(), **fit_statistics(predicted, observed)}


def fit_statistics(predicted: np.ndarray, observed: np.ndarray) -> dict:
    predicted, observed = np.asarray(predicted), np.asarray(observed)
    if len(observed) > 1 and np.ptp(observed) > 0 and np.ptp(predicted) > 0:
        rho = float(spearmanr(predicted, observed).statistic)
    else:
        rho = float("nan")
    return {"spearman": rho, "mae": float(np.mean(np.abs(predicted - observed)))}


# --- the optimum -----------------------------------------------------------------------------
def _kl(w: np.ndarray, prior: np.ndarray) -> float:
    mask = w > 0
    return float(np.sum(w[mask] * np.log(w[mask] / prior[mask])))


def objective_value(model, w: np.ndarray, prior: np.ndarray, kl_reg: float) -> float:
    value = float(model.predict(w)[0])
    return value + kl_reg * _kl(w, prior) if kl_reg else value


def _clip_to_caps(w: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """The KL projection onto {sum 1, 0 <= w <= caps} (scale the free part, clip the capped, repeat)."""
    w = np.maximum(np.asarray(w, dtype=np.float64), 0.0)
    w = w / w.sum()
    capped = np.zeros(len(w), dtype=bool)
    while True:
        left = 1.0 - caps[capped].sum()
        mass = w[~capped].sum()
        scale = left / mass if mass > 0 else 0.0
        over = (~capped) & (scale * w > caps)
        if not over.any():
            break
        capped |= over
    out = np.where(capped, caps, scale * w)
    return out / out.sum()


def optimise(
    model,
    prior: np.ndarray,
    caps: np.ndarray | None = None,
    kl_reg: float = 0.0,
    seed: int = 0,
    starts: np.ndarray | None = None,
) -> np.ndarray:
    """The mixture over the training domains of lowest predicted loss (+ kl_reg * KL(w || prior)), w <= caps."""
    prior = np.asarray(prior, dtype=np.float64)
    m = len(prior)
    caps = np.ones(m) if caps is None else np.minimum(np.asarray(caps, dtype=np.float64), 1.0)
    if caps.sum() < 1 - 1e-12:
        raise MixweightError(f"weights regmix: the per-domain caps sum to {caps.sum():.4g} < 1: no mixture fits them")
    if isinstance(model, LogLinear):
        w = _optimise_smooth(model, prior, caps, kl_reg, seed, starts)
    else:
        w = _optimise_search(model, prior, caps, kl_reg, seed)
    return _clip_to_caps(np.where(w < ZERO_BELOW, 0.0, w), caps)  # 1e-17 is a solver's 0


def _optimise_smooth(model: LogLinear, prior, caps, kl_reg, seed, starts) -> np.ndarray:
    m = len(prior)
    safe_prior = np.maximum(prior, 1e-300)

    def value(w):
        v = float(model.predict(w)[0])
        if kl_reg:
            wc = np.maximum(w, 1e-12)
            v += kl_reg * float(np.sum(wc * np.log(wc / safe_prior)))
        return v

    def grad(w):
        g = model.gradient(w)
        if kl_reg:
            g = g + kl_reg * (np.log(np.maximum(w, 1e-12) / safe_prior) + 1.0)
        return g

    candidates = [prior, np.full(m, 1.0 / m), *np.eye(m)]
    if starts is not None:
        candidates += list(np.atleast_2d(starts))
    candidates += list(sample_mixtures(prior, 2 + 16, 1.0, seed)[2:])
    best_w, best_v = None, math.inf
    constraint = {"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones(m)}
    bounds = [(0.0, float(c)) for c in caps]
    for start in candidates:
        x0 = _clip_to_caps(start, caps)
        result = minimize(
            value, x0, jac=grad, method="SLSQP", bounds=bounds, constraints=[constraint],
            options={"maxiter": 500, "ftol": 1e-12},
        )  # fmt: skip
        w = _clip_to_caps(np.clip(result.x, 0.0, None), caps)
        v = value(w)
        if v < best_v - 1e-12:
            best_w, best_v = w, v
    return best_w


def _optimise_search(model, prior, caps, kl_reg, seed) -> np.ndarray:
    rng = np.random.default_rng([seed, 1 << 20])
    m = len(prior)
    scales = np.exp(rng.uniform(math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1]), SEARCH_SAMPLES))
    alpha = np.maximum(scales[:, None] * m * prior[None, :], 1e-6)
    draws = rng.standard_gamma(alpha)
    draws /= np.maximum(draws.sum(axis=1, keepdims=True), 1e-300)
    draws = np.nan_to_num(draws)
    draws = np.array([_clip_to_caps(row if row.sum() > 0 else prior, caps) for row in draws])
    scores = model.predict(draws)
    if kl_reg:
        safe = np.maximum(draws, 1e-12)
        scores = scores + kl_reg * np.sum(draws * np.log(safe / np.maximum(prior, 1e-300)), axis=1)
    best = np.argsort(scores, kind="stable")[:TOP_K]
    return _clip_to_caps(draws[best].mean(axis=0), caps)
