"""Domain-weight update rules as pure functions (float64 tensors, no process group, no model).

Shared by the offline proxy methods (`mixweight.domain.doremi`) and the online mixer of the
main run (`mixweight.train.mixers`), so both apply exactly the same arithmetic.
docs/algorithms.md sections 2.3 (DoReMi) and 6 (online mixing) state the formulas.

- `doremi_update`: exponentiated gradient on the per-domain excess loss, then smoothing;
- `domain_means`: per-domain averages of per-sample sums (token-weighted), with which domains were present;
- `toward_prior`: (1 - mass) p + mass prior, the exploration every online policy mixes in;
- ODM (Albalak et al., 2023; its official code's two updaters): `exp3_exploration` (eps_t),
  `odm_smoothed_rewards` / `odm_smoothed_policy` (the smoothed-mean updater: smoothed exp(loss),
  linear policy) and `exp3_rewards` / `exp3_policy` (the EXP3 updater: cumulative importance-weighted
  loss, exponential-weights policy).
"""

from __future__ import annotations

import math

import torch

EXP_LIMIT = 700.0  # exp(700) ~ 1e304: a loss above it counts as 700 nats, so exp(L) stays finite in float64
EXP3_REWARD_SCALE = 10.0  # the official EXP3 updater divides each reward by 10 (its comment: so the sum won't explode)


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


def toward_prior(weights: torch.Tensor, prior: torch.Tensor, mass: float) -> torch.Tensor:
    """(1 - mass) * weights + mass * prior: exploration centred on the prior (uniform prior: mass / k each)."""
    return (1.0 - mass) * weights + mass * prior


def exp3_exploration(k: int, t: int, fixed: float | None = None) -> float:
    """ODM's exploration rate epsilon_t = min(1/k, sqrt(ln k / (k t))); epsilon_0 = 1/k; `fixed` overrides it."""
    if fixed is not None:
        return float(fixed)
    if t <= 0 or k <= 1:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def odm_smoothed_rewards(
    rewards: torch.Tensor, losses: torch.Tensor, present: torch.Tensor, alpha: float
) -> torch.Tensor:
    """R_i <- alpha R_i + (1 - alpha) exp(L_i) for the domains present in the step; the others keep R_i.

    The official smoothed-mean updater's reward (no importance weight: R_i moves only when domain i is
    observed, so it is a smoothed mean of exp(L_i) whatever the sampling probability)."""
    updated = alpha * rewards + (1.0 - alpha) * torch.exp(losses.clamp(max=EXP_LIMIT))
    return torch.where(present, updated, rewards)


def odm_smoothed_policy(rewards: torch.Tensor, prior: torch.Tensor, eps: float) -> torch.Tensor:
    """pi_i = (1 - k eps) prior_i R_i / sum_j prior_j R_j + k eps prior_i (the prior itself while no R_i > 0).

    With a uniform prior: the official smoothed-mean updater's linear policy (1 - k eps) R_i / sum_j R_j + eps.
    Computed in log space, so rewards near exp(EXP_LIMIT) do not overflow the sum."""
    k = rewards.numel()
    if not bool((rewards > 0).any()):
        return prior.clone()
    exploit = torch.softmax(torch.log(prior) + torch.log(rewards), dim=0)
    return toward_prior(exploit, prior, k * eps)


def exp3_rewards(
    rewards: torch.Tensor, losses: torch.Tensor, counts: torch.Tensor, total: int, policy: torch.Tensor
) -> torch.Tensor:
    """R_i <- R_i + (n_i / (N pi_i)) L_i / 10 for every domain (0 when domain i has no sample in the step).

    n_i of the step's N samples came from domain i, sampled with probability pi_i: E[n_i] = N pi_i, so the
    increment's expectation is L_i / 10 whatever pi_i (an unbiased importance-weighted estimate). With one
    domain per step (n_i = N) it is the official EXP3 updater's L_i / (10 pi_i)."""
    counts = counts.to(torch.float64)
    estimate = torch.where(counts > 0, counts * losses / (max(total, 1) * policy), torch.zeros_like(rewards))
    return rewards + estimate / EXP3_REWARD_SCALE


def exp3_policy(rewards: torch.Tensor, prior: torch.Tensor, eps_prev: float, eps: float) -> torch.Tensor:
    """pi_i = (1 - k eps) * prior_i exp(eps_prev R_i) / sum_j prior_j exp(eps_prev R_j) + k eps prior_i.

    With a uniform prior this is the official EXP3 updater (and ODM's Algorithm 1) exactly; a prior
    (natural, an offline artifact) is the base measure of the exponential weights and the centre of the
    exploration, so equal rewards give the prior itself."""
    k = rewards.numel()
    gibbs = torch.softmax(torch.log(prior) + eps_prev * rewards, dim=0)
    return toward_prior(gibbs, prior, k * eps)
