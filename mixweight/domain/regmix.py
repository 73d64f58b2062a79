"""Regression mixing (RegMix; Data Mixing Laws): fit validation loss as a function of the mixture, then minimise it.

Pure numpy/scipy functions; no training, no files (the swarm that produces the data is
`mixweight.domain.regmix_run`, the artifact `regmix_fit`). docs/algorithms.md section 5 has the formulas and the
choices.

- `sample_mixtures(prior, k, concentration, seed)`: the swarm's mixtures. Row 0 is the prior,
  row 1 uniform, row i >= 2 a Dirichlet draw centred on the prior, alpha = A * s_i * m * prior
  with s_i log-uniform in [0.1, 5] (RegMix's range of scales: small s gives sparse mixtures;
  when the prior is uniform, row 1 is a draw too);
  row i depends only on (seed, i), so a larger swarm extends a smaller one.
- `LogLinear`: per target domain i, L_i(r) = c_i + k_i * exp(sum_j t_ij r_j) (Ye et al. 2024),
  fitted by least squares. t is identified up to a constant on the simplex (t + a 1 with
  k e^-a is the same function), so t is kept centred (sum_j t_ij = 0).
- `GradientBoosting`: LightGBM on the target loss directly (RegMix), the `regmix` extra.
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
from scipy.optimize import least_squares, minimize
from scipy.stats import spearmanr

from mixweight.errors import MixweightError, did_you_mean

REGRESSORS = ("loglinear", "lightgbm")
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


# --- the log-linear mixing law --------------------------------------------------------------
def _centred_basis(m: int) -> np.ndarray:
    """[m, m-1] orthonormal basis of {t : sum t = 0}."""
    q, _ = np.linalg.qr(np.eye(m) - 1.0 / m)
    return q[:, : m - 1]


class LogLinear:
    """L_i(r) = c_i + k_i * exp(t_i . r), one law per target domain; predicts their mean."""

    name = "loglinear"

    def __init__(self):
        self.params: list[dict] = []

    @staticmethod
    def _fit_one(x: np.ndarray, y: np.ndarray, basis: np.ndarray) -> dict:
        m = x.shape[1]
        xb = x @ basis  # t . r = u . (B^T r) with t = B u centred

        def residuals(p):
            return p[0] + np.exp(p[1] + xb @ p[2:]) - y

        def jacobian(p):
            e = np.exp(p[1] + xb @ p[2:])
            return np.column_stack([np.ones_like(y), e, e[:, None] * xb])

        low, spread = float(y.min()), float(max(y.max() - y.min(), 1e-6))
        best = None
        # deterministic starts: the floor c at several depths under the lowest observed loss
        for depth in (0.05, 0.5, 2.0, 10.0):
            c0 = max(low - depth * spread, 0.0)
            p0 = np.concatenate([[c0], [math.log(max(float(y.mean()) - c0, 1e-6))], np.zeros(m - 1)])
            bounds_low = np.concatenate([[0.0], [-50.0], np.full(m - 1, -100.0)])
            bounds_high = np.concatenate([[max(low, 1e-9)], [50.0], np.full(m - 1, 100.0)])
            p0 = np.clip(p0, bounds_low, np.nextafter(bounds_high, -np.inf))
            fit = least_squares(
                residuals, p0, jac=jacobian, bounds=(bounds_low, bounds_high), method="trf", x_scale="jac",
                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=200,
            )  # fmt: skip
            if best is None or fit.cost < best.cost - 1e-15:
                best = fit
        p = best.x
        t = basis @ p[2:]
        return {"c": float(p[0]), "k": float(math.exp(p[1])), "t": [float(v) for v in t]}

    def fit(self, x: np.ndarray, y_by_domain: np.ndarray) -> "LogLinear":
        """x [K, m] mixtures over the training domains; y_by_domain [K, n_targets] losses."""
        basis = _centred_basis(x.shape[1])
        self.params = [self._fit_one(x, y_by_domain[:, j], basis) for j in range(y_by_domain.shape[1])]
        return self

    def predict_domains(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return np.column_stack([p["c"] + p["k"] * np.exp(x @ np.asarray(p["t"])) for p in self.params])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_domains(x).mean(axis=1)

    def gradient(self, r: np.ndarray) -> np.ndarray:
        """d/dr of the mean predicted loss at one mixture r [m]."""
        g = np.zeros_like(r)
        for p in self.params:
            t = np.asarray(p["t"])
            g += p["k"] * math.exp(float(t @ r)) * t
        return g / len(self.params)


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


def make_regressor(name: str, seed: int):
    check_regressor(name)
    return LogLinear() if name == "loglinear" else GradientBoosting(seed)


# --- fit quality ---------------------------------------------------------------------------
def cross_validate(name: str, x: np.ndarray, y_by_domain: np.ndarray, seed: int) -> dict:
    """Held-out predictions of the target loss: leave-one-out up to MAX_LOO runs, else FOLDS-fold (seeded)."""
    k = len(x)
    if k <= MAX_LOO:
        folds, method = [[i] for i in range(k)], "leave-one-out"
    else:
        order = np.random.default_rng(seed).permutation(k)
        folds, method = [sorted(order[f::FOLDS].tolist()) for f in range(FOLDS)], f"{FOLDS}-fold"
    predicted = np.zeros(k)
    for held in folds:
        keep = np.setdiff1d(np.arange(k), held)
        model = make_regressor(name, seed).fit(x[keep], y_by_domain[keep])
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
