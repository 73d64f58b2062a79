"""DoGE's per-step update as pure functions: float64 tensors, no process group, no model.

docs/algorithms.md section 3 states the formulas; `mixweight.domain.doge.DoGEObjective` computes the
per-domain gradients and calls `doge_step`.

At each optimizer step of the proxy:

    g_i    = gradient of the mean loss of domain i's samples in the step (all micro-batches, all ranks),
             clipped to norm `max_grad_norm`                                       (clip_rows)
    s_i    = score of <g_i, g_target>                                             (doge_scores)
    alpha' = alpha * exp(lr * s / mu), normalized                                 (doge_update)
    grad   = sum_i alpha'_i g_i       (then the loop clips and steps the optimizer)

`doge_step` does all of it from the inner products of the step's per-domain gradient sums.

Scores (`score=`):
- "reference" (default): the official code (github.com/Olivia-fsm/DoGE, `src/trainer.py`,
  `update_domain_weights_distributed`): every per-domain gradient, targets included, is first
  clipped to `max_grad_norm` the way torch.nn.utils.clip_grad_norm_ does it (scale
  max / (||g|| + 1e-6) when below 1); the target gradient is the SUM of the target rows; the
  inner product is divided by the mean L2 norm of the (clipped) training-domain gradients plus
  1e-6 and clipped to [0, 5] (the code clips lr * s / norm to [lr * dw_min, lr * dw_max] with
  dw_min 0, dw_max 5; as lr >= 0 multiplies the score in `doge_update`, that is the same).
- "paper": the raw inner product of the paper's Algorithm 1, no normalization; several targets
  are averaged. Per-domain clipping only if `max_grad_norm` > 0 (its default is 0).

Choices where paper and code leave room (each documented at the code that makes it):
- Domains absent from a step (no finite sample of theirs on any rank) have no gradient: they
  get no score, keep their alpha, and contribute nothing; the present domains share the
  mass they held before (sum over present alpha is preserved), and the applied gradient is
  sum over present of alpha'_i g_i / sum over present alpha'_i, so its scale is that of a mean loss.
  (The reference code scores an absent domain with its previous step's gradient.) With every
  domain in every step, which large batches give, both agree.
- A step without any target sample makes no update (alpha kept) but still trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCORES = ("reference", "paper")
NORM_EPS = 1e-6  # added to the mean gradient norm, as the reference code does
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: scale = max_norm / (norm + 1e-6)
SCORE_MAX = 5.0  # the reference clips lr * s / norm to [0, 5 lr] (dw_min, dw_max)


def clip_rows(grads: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row to norm <= max_norm as clip_grad_norm_ does (x max / (||g|| + 1e-6) if < 1); in place.

    max_norm <= 0 leaves the rows as they are (the reference code clips only when max_grad_norm > 0).
    """
    if max_norm <= 0 or len(grads) == 0:
        return grads
    grads.mul_(clip_scale(grads.double().norm(dim=1), max_norm).to(grads.dtype).unsqueeze(1))
    return grads


def clip_scale(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_'s factor for gradients of these norms: min(1, max / (norm + 1e-6)); 1 if max_norm <= 0."""
    if max_norm <= 0:
        return torch.ones_like(norms)
    return (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)


def normalize_scores(raw: torch.Tensor, norms: torch.Tensor, score: str) -> torch.Tensor:
    """The score from the raw inner products and the training domains' (clipped) gradient norms."""
    if score == "paper":
        return raw
    return (raw / (norms.mean() + NORM_EPS)).clamp(0.0, SCORE_MAX)


def doge_scores(
    domain_grads: torch.Tensor, target="all", score: str = "reference", target_grads: torch.Tensor | None = None
) -> torch.Tensor:
    """Alignment score of each training domain's gradient with the target gradient: [k], float64.

    domain_grads: [k, P], one flattened (already clipped, see `clip_rows`) gradient per training domain.
    target: "all": s_i = <g_i, sum_{j != i} g_j>, the self term <g_i, g_i> excluded; or a
        non-empty list of row indices into `target_grads` ([m, P], the held-out targets' gradients:
        domains, or the held-out mixture): s_i = <g_i, g_target>, g_target the SUM of those rows
        for "reference" (as the official code), their mean for "paper".
    score: "reference": s_i / (mean_j ||g_j||_2 + 1e-6), the mean over the k training domains'
        norms, clipped to [0, 5]; "paper": the raw inner product (docs/algorithms.md section 3.3).
    Arguments are assumed valid (DoGEObjective and the runner's config check them).
    """
    grads = domain_grads.double()
    if isinstance(target, str):  # "all"
        total = grads.sum(dim=0)
        raw = grads @ total - (grads * grads).sum(dim=1)
    else:
        rows = target_grads.double()[list(target)]
        raw = grads @ (rows.sum(dim=0) if score == "reference" else rows.mean(dim=0))
    return normalize_scores(raw, grads.norm(dim=1), score)


def doge_update(
    alpha: torch.Tensor, scores: torch.Tensor, lr: float, mu: float, present: torch.Tensor | None = None
) -> torch.Tensor:
    """alpha_next proportional to alpha * exp(lr * s / mu), in log space (logsumexp), float64
    (docs/algorithms.md section 3.4); mu > 0 is assumed (checked where it enters).

    `present` (bool [k], default all): only these domains are updated; the others keep their
    alpha exactly and the present ones share the mass they held before (their sum is
    preserved), so alpha_next still sums to 1. Scores of absent domains are ignored.
    """
    alpha = alpha.double()
    present = torch.ones_like(alpha, dtype=torch.bool) if present is None else present.bool()
    if not present.any():
        return alpha.clone()
    logits = alpha[present].log() + lr * scores.double()[present] / mu
    mass = alpha[present].sum()
    out = alpha.clone()
    out[present] = mass * torch.softmax(logits, dim=0)
    return out


@dataclass
class DoGEStep:
    """What one step's update decided (`doge_step`)."""

    alpha: torch.Tensor  # [k] float64: the weights after the step (the same tensor when not updated)
    scores: torch.Tensor  # [k] float64: each present training domain's score, 0.0 elsewhere
    present: torch.Tensor  # [k] bool: training domains with a finite sample in the step
    updated: bool  # False when no training domain, or no target sample, was present: alpha kept
    mix: torch.Tensor  # [k] float64: alpha renormalized over the present domains (0 elsewhere)
    row_weights: torch.Tensor  # [R]: the applied gradient is row_weights @ (the rows' gradient sums)


def doge_step(
    inner: torch.Tensor,
    counts: torch.Tensor,
    slots: list[int | None],
    alpha: torch.Tensor,
    lr: float,
    mu: float,
    score: str,
    max_grad_norm: float,
    universal: bool,
) -> DoGEStep:
    """DoGE's update from the inner products of one step's per-domain gradient sums: a pure function.

    inner: [R, R] float64, <G_r, G_s> for the rows' gradients summed over their finite samples (all ranks);
    counts: [R] each row's finite samples (0: the row is absent); slots: each row's training-domain index
    into `alpha` [k], or None for a target row (a held-out domain or the held-out mixture); universal: the
    target "all" (scores against the other training rows; target rows unused).

    Row r's mean-loss gradient is g_r = G_r / counts[r], clipped to max_grad_norm (`clip_scale`): c_r g_r.
    Every quantity the scores need is an inner product of those, so `inner` scaled by scalars suffices
    (docs/algorithms.md sections 3.3 and 3.4): the scores (`normalize_scores`) and `doge_update` give
    alpha', and the applied gradient is sum over present i of alpha'_i c_i g_i / sum over present alpha'_i
    (docs/algorithms.md section 3.1), i.e. `row_weights @ G`. Arguments are assumed valid.
    """
    count = counts.double().clamp(min=1)
    gram = inner / (count.unsqueeze(0) * count.unsqueeze(1))  # <g_r, g_s>
    clip = clip_scale(gram.diagonal().clamp(min=0).sqrt(), max_grad_norm)
    factor, clipped = clip / count, gram * (clip.unsqueeze(0) * clip.unsqueeze(1))  # the clipped rows' products
    kept = [r for r in range(len(slots)) if counts[r] > 0]  # a domain whose losses are all non-finite is absent
    train_rows = [r for r in kept if slots[r] is not None]
    target_rows = [r for r in kept if slots[r] is None]
    present = torch.zeros(len(alpha), dtype=torch.bool)
    present[[slots[r] for r in train_rows]] = True
    scores = torch.zeros(len(alpha), dtype=torch.float64)
    updated = bool(train_rows) and (universal or bool(target_rows))
    if updated:  # doge_scores on the clipped rows, from their inner products
        if universal:  # <g_i, sum_{j != i} g_j>
            block = clipped[train_rows][:, train_rows]
            raw = block.masked_fill(torch.eye(len(block), dtype=torch.bool, device=block.device), 0.0).sum(dim=1)
        else:  # reference: the sum of the targets; paper: their mean
            raw = clipped[train_rows][:, target_rows].sum(dim=1)
            raw = raw if score == "reference" else raw / len(target_rows)
        scores[present] = normalize_scores(raw, clipped.diagonal()[train_rows].clamp(min=0).sqrt(), score).cpu()
        alpha = doge_update(alpha, scores, lr, mu, present)
    mix = torch.zeros(len(alpha), dtype=torch.float64)
    if present.any():
        mix[present] = alpha[present] / alpha[present].sum()
    row_weights = torch.zeros(len(slots), dtype=torch.float64, device=inner.device)
    row_weights[train_rows] = mix[present].to(inner.device) * factor[train_rows]
    return DoGEStep(alpha, scores, present, updated, mix, row_weights)
