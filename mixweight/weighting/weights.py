"""Per-sample loss weights for one global batch: softmax of a strategy score at temperature r.

w_i = exp(f(x_i) / r) / sum_j exp(f(x_j) / r) is the closed-form maximizer of
sum_i w_i f_i - r KL(w || uniform) over the simplex (the paper's Proposition 1); the
training loss is then the weighted loss sum_i w_i l_i. Weights are computed from detached losses, so
they act as constants in the backward pass, exactly as in the paper and its code
(docs/algorithms.md sections 1.4 and 1.5).

These are pure functions of valid input: r > 0 and cap >= 1 are checked where they enter
(TrainConfig.validate for a run; RSchedule and SampleWeighting for library users), not here.
"""

from __future__ import annotations

import torch

from mixweight.weighting.strategies import get_strategy, normalize_losses


def _capped_softmax(z: torch.Tensor, cap: float) -> torch.Tensor:
    """KL projection of softmax(z) onto {w in simplex, w_i <= cap/N}.

    Minimizing KL(w || softmax(z)) under the caps gives: capped samples get exactly cap/N,
    the others keep their softmax proportions, rescaled to the remaining mass. The capped
    set is found by iterating (cap the violators, redistribute, repeat): the rescaling only
    grows, so once capped a sample stays capped and at most N rounds are needed. The
    redistribution is a softmax over the uncapped logits, so it stays exact even when
    their plain softmax weights have underflowed to 0 (tiny r). This is the natural
    projection for a KL-regularized objective (the Euclidean one would shift mass equally).
    """
    n = z.numel()
    u = cap / n
    capped = torch.zeros(n, dtype=torch.bool, device=z.device)
    w = torch.softmax(z, dim=0)
    while True:
        over = (w > u) & ~capped
        if not bool(over.any()):
            return w
        capped |= over
        free = ~capped
        w = torch.full_like(z, u)
        if bool(free.any()):
            rest = 1.0 - u * int(capped.sum())
            w[free] = rest * torch.softmax(z[free], dim=0)


def sample_weights(
    losses: torch.Tensor, strategy: str = "linupper", r: float = 0.4, cap: float | None = None
) -> torch.Tensor:
    """Weights (same shape as ``losses``, summing to 1 over all entries) for sum_i w_i l_i.

    ``losses`` holds one loss per sample of the *global* batch (gather across ranks first:
    the min/max normalization must see every sample). Computation runs under no_grad on
    ``losses.detach()`` in float64; the result is float64 for float64 input, else float32,
    and never requires grad.

    - strategy: "linupper", "quadratic", "extremes" or "uniform" ("none" is an alias).
    - r: softmax temperature, > 0 (not checked here: SampleWeighting / RSchedule check it).
      Max/min weight ratio is at most e^(1/r). r -> inf gives uniform weights; r -> 0 puts
      all mass on the samples with the highest score f(x), shared equally among ties
      (LinUpper: every sample with x >= 0).
    - cap: if set (>= 1, not checked here), no weight exceeds cap/N; see ``_capped_softmax`` (the paper's
      Theorem 1 needs cap = 2). None leaves the softmax weights unchanged.

    Non-finite losses (NaN, +-inf) get weight exactly 0 and the remaining samples are
    weighted among themselves as if the bad ones were absent (N counts finite samples only).
    If every loss is non-finite the result is all zeros: the weighted loss is then 0 and the
    caller should skip the step.
    """
    f = get_strategy(strategy)
    out_dtype = torch.float64 if losses.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        flat = losses.detach().reshape(-1).to(torch.float64)
        finite = torch.isfinite(flat)
        out = torch.zeros_like(flat)
        if bool(finite.any()):
            scores = f(normalize_losses(flat[finite]))
            z = (scores - scores.max()) / r  # max-subtraction: the top score has logit 0
            out[finite] = torch.softmax(z, dim=0) if cap is None else _capped_softmax(z, cap)
        return out.to(out_dtype).reshape(losses.shape)


def weight_stats(weights: torch.Tensor, losses: torch.Tensor | None = None) -> dict[str, float]:
    """Diagnostics to log per step; N = number of entries of ``weights``.

    - max_weight_x_n: max_i w_i * N. Theorem 1's bound needs <= 2; LinUpper does not enforce
      it, so watch it (or set a cap).
    - ess_fraction: effective sample size (1 / sum w^2) / N, 1.0 for uniform weights.
    - entropy: -sum w log w (0 log 0 = 0); log N for uniform weights.
    - nonfinite (only if ``losses`` is given): how many losses were NaN/inf (weight 0).
    All-zero weights (every loss non-finite) report 0.0 for all three weight statistics.
    """
    w = weights.detach().reshape(-1).to(torch.float64)
    n = w.numel()
    total_sq = float((w * w).sum())
    stats = {
        "max_weight_x_n": float(w.max()) * n if n else 0.0,
        "ess_fraction": (1.0 / total_sq) / n if total_sq > 0 else 0.0,
        "entropy": float(-(w * torch.log(torch.where(w > 0, w, torch.ones_like(w)))).sum()),
    }
    if losses is not None:
        stats["nonfinite"] = float((~torch.isfinite(losses.detach())).sum())
    return stats
