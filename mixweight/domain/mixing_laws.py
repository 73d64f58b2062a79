"""Parametric mixing laws: validation loss as a smooth function of the mixture r (pure numpy/scipy).

One law per target domain i, each L_i(r) = c_i + exp(a_i + theta_i . phi(r)) with c_i >= 0 (the loss no mixture
removes); a model predicts the mean over its target domains. Two feature maps phi:

- `LogLinear` (Ye et al. 2024, "Data Mixing Laws"; olmix's log-linear law): phi(r) = r, so
  L_i = c_i + k_i exp(t_i . r). t is identified up to a constant on the simplex (t + b 1 with k e^-b is the
  same function), so t is kept centred (sum_j t_ij = 0) and k = e^a.
- `PowerLogLinear`: the same times a power of every domain's share,
  L_i = c_i + k_i exp(t_i . r) prod_j (r_j + EPS)^s_ij: the per-domain data scaling law (a domain's loss
  falls as a power of how much of it is trained on; BiMix's L_i ~ r_i^-alpha_i) inside the log-linear law.
  EPS = 1e-3 is the resolution of a swarm's mixtures (RegMix's tables round to 3 decimals, our sampler sets
  weights under 1e-3 to 0), so a domain at 0 counts as one just under the smallest share a swarm records.

The fit minimises sum rho(residual) by scipy's trust-region least squares: `loss="least_squares"` (rho = r^2)
or `loss="huber"` (quadratic within `delta` nats, linear beyond: olmix's fit, delta 0.02), from deterministic
starts (the floor c at several depths under the lowest loss, every other parameter 0; PowerLogLinear also from
the log-linear law's own fit).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

FIT_LOSSES = ("least_squares", "huber")
HUBER_DELTA = 0.02  # nats: olmix's LogLinearRegressor.fit default
EPS = 1e-3  # PowerLogLinear's share offset (module docstring)
START_DEPTHS = (0.05, 0.5, 2.0, 10.0)  # the floor's starts: min(y) - depth * spread(y)


def centred_basis(m: int) -> np.ndarray:
    """[m, m-1] orthonormal basis of {t : sum t = 0}."""
    q, _ = np.linalg.qr(np.eye(m) - 1.0 / m)
    return q[:, : m - 1]


class LogLinear:
    """L_i(r) = c_i + k_i * exp(t_i . r), one law per target domain; predicts their mean."""

    name = "loglinear"
    floor_at_min = False  # c <= min(y): measured, see docs/algorithms.md

    def __init__(self, loss: str = "least_squares", delta: float = HUBER_DELTA):
        self.loss, self.delta = loss, delta
        self.params: list[dict] = []

    # --- the feature map (a subclass adds features) ------------------------------------------------
    def _features(self, x: np.ndarray, basis: np.ndarray) -> np.ndarray:
        return x @ basis  # t . r = u . (B^T r) with t = B u centred

    def _record(self, p: np.ndarray, basis: np.ndarray) -> dict:
        return {"c": float(p[0]), "k": float(math.exp(p[1])), "t": [float(v) for v in basis @ p[2:]]}

    def _exponent(self, law: dict, x: np.ndarray) -> np.ndarray:
        return math.log(law["k"]) + x @ np.asarray(law["t"])

    def _exponent_gradient(self, law: dict, r: np.ndarray) -> np.ndarray:
        return np.asarray(law["t"])

    def _starts(self, x: np.ndarray, y: np.ndarray, width: int) -> list[np.ndarray]:
        """The floor c at several depths under the lowest loss, k the mean gap above it, every exponent 0."""
        low, spread = float(y.min()), float(max(y.max() - y.min(), 1e-6))
        starts = []
        for depth in START_DEPTHS:
            c0 = max(low - depth * spread, 0.0)
            starts.append(np.concatenate([[c0], [math.log(max(float(y.mean()) - c0, 1e-6))], np.zeros(width)]))
        return starts

    # --- fit -----------------------------------------------------------------------------------------
    def _fit_one(self, x: np.ndarray, y: np.ndarray, basis: np.ndarray) -> dict:
        features = self._features(x, basis)
        width = features.shape[1]

        def residuals(p):
            return p[0] + np.exp(p[1] + features @ p[2:]) - y

        def jacobian(p):
            e = np.exp(p[1] + features @ p[2:])
            return np.column_stack([np.ones_like(y), e, e[:, None] * features])

        low = float(y.min())
        bounds_low = np.concatenate([[0.0], [-50.0], np.full(width, -100.0)])
        bounds_high = np.concatenate([[max(low, 1e-9) if self.floor_at_min else np.inf], [50.0], np.full(width, 100.0)])
        starts = self._starts(x, y, width)
        robust = {"loss": "huber", "f_scale": self.delta} if self.loss == "huber" else {"loss": "linear"}
        best = None
        for p0 in starts:
            p0 = np.clip(p0, bounds_low, np.nextafter(bounds_high, -np.inf))
            fit = least_squares(
                residuals, p0, jac=jacobian, bounds=(bounds_low, bounds_high), method="trf", x_scale="jac",
                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=200, **robust,
            )  # fmt: skip
            if best is None or fit.cost < best.cost - 1e-15:
                best = fit
        return self._record(best.x, basis)

    def fit(self, x: np.ndarray, y_by_domain: np.ndarray) -> "LogLinear":
        """x [K, m] mixtures over the training domains; y_by_domain [K, n_targets] losses."""
        basis = centred_basis(x.shape[1])
        self.params = [self._fit_one(x, y_by_domain[:, j], basis) for j in range(y_by_domain.shape[1])]
        return self

    # --- use -----------------------------------------------------------------------------------------
    def predict_domains(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return np.column_stack([law["c"] + np.exp(self._exponent(law, x)) for law in self.params])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_domains(x).mean(axis=1)

    def gradient(self, r: np.ndarray) -> np.ndarray:
        """d/dr of the mean predicted loss at one mixture r [m]."""
        g = np.zeros_like(r, dtype=np.float64)
        for law in self.params:
            g += math.exp(float(self._exponent(law, r[None])[0])) * self._exponent_gradient(law, r)
        return g / len(self.params)

    def parameter_count(self, m: int) -> int:
        """Parameters of one law over m training domains (c, k and m - 1 free t)."""
        return m + 1


class PowerLogLinear(LogLinear):
    """L_i(r) = c_i + k_i * exp(t_i . r) * prod_j (r_j + EPS)^s_ij (module docstring)."""

    name = "power"

    def _features(self, x: np.ndarray, basis: np.ndarray) -> np.ndarray:
        return np.column_stack([x @ basis, np.log(x + EPS)])

    def _record(self, p: np.ndarray, basis: np.ndarray) -> dict:
        m = basis.shape[0]
        law = super()._record(p[: 2 + m - 1], basis)
        law["s"] = [float(v) for v in p[2 + m - 1 :]]
        law["eps"] = EPS
        return law

    def _exponent(self, law: dict, x: np.ndarray) -> np.ndarray:
        return super()._exponent(law, x) + np.log(x + law["eps"]) @ np.asarray(law["s"])

    def _exponent_gradient(self, law: dict, r: np.ndarray) -> np.ndarray:
        return np.asarray(law["t"]) + np.asarray(law["s"]) / (r + law["eps"])

    def _starts(self, x: np.ndarray, y: np.ndarray, width: int) -> list[np.ndarray]:
        """The log-linear law's own fit with every power 0 (the richer law starts where the simpler one ends),
        and the shallowest of the log-linear starts."""
        basis = centred_basis(x.shape[1])
        simple = LogLinear(self.loss, self.delta)
        simple.floor_at_min = self.floor_at_min
        law = simple._fit_one(x, y, basis)
        u = basis.T @ np.asarray(law["t"])
        warm = np.concatenate([[law["c"]], [math.log(law["k"])], u, np.zeros(width - len(u))])
        return [warm, super()._starts(x, y, width)[0]]

    def parameter_count(self, m: int) -> int:
        return 2 * m + 1
