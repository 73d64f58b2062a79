"""Domain-weight update rules as pure functions (float64 tensors, no process group, no model).

Shared by the offline proxy methods (`mixweight.domain.doremi`) and the online mixer of the
main run (`mixweight.train.online`), so both apply exactly the same arithmetic.
docs/algorithms.md sections 2.3 (DoReMi) and 6 (online mixing) state the formulas.

- `doremi_update`: exponentiated gradient on the per-domain excess loss, then smoothing;
- `domain_means`: per-domain averages of per-sample sums (token-weighted), with which domains were present;
- `exp3_exploration`, `exp3_policy`, `exp3_rewards`: ODM's EXP3 bandit (Albalak et al., 2023).
"""

from __future__ import annotations

import math

import torch


def doremi_update(alpha: torch.Tensor, excess: torch.Tensor, eta: float, smoothing: float) -> torch.Tensor:
    """alpha' = (1 - c) * softmax(log alpha + eta * lambda) + c / k (exponentiated gradient + smoothing)."""
    k = alpha.numel()
    mixed = torch.softmax(torch.log(alpha) + eta * excess, dim=0)
    return (1.0 - smoothing) * mixed + smoothing / k


def domain_means(
    sums: torch.Tensor, counts: torch.Tensor, domains: torch.Tensor, valid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-domain sum(sums) / sum(counts) over the valid samples, present) in float64; 0.0 where absent.

    DoReMi: `sums` the per-sample clipped excess summed over tokens and `counts` the counted tokens,
    so the mean is the token average of domain i's excess (lambda_t[i]). ODM: `sums` the per-sample
    mean losses and `counts` 1, so the mean is the average sample loss of domain i in the step.
    """
    sums, counts = sums.to(torch.float64), counts.to(torch.float64)
    zero = torch.zeros_like(sums)
    domains = domains.long()
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, domains, torch.where(valid, sums, zero))
    weight = torch.zeros(k, dtype=torch.float64).index_add_(0, domains, torch.where(valid, counts, zero))
    present = weight > 0
    return torch.where(present, total / weight.clamp(min=1e-300), torch.zeros_like(total)), present


def exp3_exploration(k: int, t: int, fixed: float | None = None) -> float:
    """ODM's exploration rate epsilon_t = min(1/k, sqrt(ln k / (k t))); epsilon_0 = 1/k; `fixed` overrides it."""
    if fixed is not None:
        return float(fixed)
    if t <= 0 or k <= 1:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def exp3_policy(rewards: torch.Tensor, prior: torch.Tensor, eps_prev: float, eps: float) -> torch.Tensor:
    """pi_i = (1 - k eps) * prior_i exp(eps_prev R_i) / sum_j prior_j exp(eps_prev R_j) + eps.

    With a uniform prior this is ODM's Algorithm 1 exactly; a prior (natural, an offline artifact)
    is the base measure of the exponential weights, so pi starts at the prior's shape.
    """
    k = rewards.numel()
    gibbs = torch.softmax(torch.log(prior) + eps_prev * rewards, dim=0)
    return (1.0 - k * eps) * gibbs + eps


def exp3_rewards(
    rewards: torch.Tensor, losses: torch.Tensor, present: torch.Tensor, policy: torch.Tensor, alpha: float
) -> torch.Tensor:
    """R_i <- alpha R_i + (1 - alpha) L_i / pi_i for the domains present in the step; the others keep R_i."""
    updated = alpha * rewards + (1.0 - alpha) * losses / policy
    return torch.where(present, updated, rewards)
