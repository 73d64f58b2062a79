"""online:odm: ODM's bandit over the domains (Albalak et al., 2023) as its official code computes it.

Rewarded by each domain's training loss in the step (smoothed exp(loss) by default); no extra
forward. docs/algorithms.md section 6.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from mixweight.core.config import option, require
from mixweight.errors import MixweightError
from mixweight.train.mixers import EARLIER, OnlineMixer, register_mixer, state_vector
from mixweight.train.step import StepResult
from mixweight.weighting.domain_update import (
    domain_means,
    exp3_exploration,
    exp3_policy,
    exp3_rewards,
    odm_smoothed_policy,
    odm_smoothed_rewards,
)

REWARDS = ("smoothed", "exp3")


@dataclass
class ODMOptions:
    """`mixing: {odm: {...}}`: ODM's options."""

    reward: str = option(
        "smoothed",
        "online:odm: smoothed (the official code's smoothed-mean updater: R <- alpha R + (1 - alpha) exp(loss), "
        "policy linear in R) or exp3 (its EXP3 updater: R += importance-weighted loss / 10, exponential weights)",
    )
    alpha: float = option(0.9, "online:odm: reward smoothing of reward smoothed, R <- alpha R + (1 - alpha) exp(L)")
    exploration: Optional[float] = option(
        None,
        "online:odm: a fixed exploration rate in (0, 1/k], mass k eps spread as the prior (default: min(1/k, "
        "sqrt(ln k / (k t))), decaying)",
    )

    def validate(self) -> None:
        require(0 <= self.alpha < 1, f"train: 'mixing.odm.alpha' must be in [0, 1), got {self.alpha}")
        require(
            self.exploration is None or 0 < self.exploration < 1,
            f"train: 'mixing.odm.exploration' must be in (0, 1/k] for k domains, got {self.exploration}",
        )
        require(
            self.reward in REWARDS,
            f"train: 'mixing.odm.reward' must be one of {', '.join(REWARDS)}, got {self.reward!r}",
        )


DECAYING = "min(1/k, sqrt(ln k / (k t)))"  # the recorded `exploration` when it decays (a number when fixed)


@register_mixer
class ODMMixer(OnlineMixer):
    """ODM (Albalak et al., 2023) as its official code computes it, over the domains of each mixed batch.

    `smoothed` (default; the code's smoothed-mean updater, which its README names the paper's implementation):
    R_i <- alpha R_i + (1 - alpha) exp(L_i), policy linear in R. `exp3` (its EXP3 updater): cumulative
    importance-weighted loss / 10, exponential weights. Both with the decaying exploration eps_t, centred on
    the prior. docs/algorithms.md section 6.2."""

    name = "odm"
    Options = ODMOptions
    RECORDED = ("reward", "alpha", "exploration")

    def __init__(self, domains, prior, every, alpha: float = 0.9, exploration: float | None = None, reward="smoothed"):
        super().__init__(domains, prior, every)
        if reward not in REWARDS:
            raise MixweightError(f"train: 'mixing.odm.reward' must be one of {', '.join(REWARDS)}, got {reward!r}")
        self.alpha, self.fixed, self.reward = float(alpha), exploration, reward
        k = int(self.active.sum())
        if exploration is not None and not 0 < exploration <= 1.0 / k:
            raise MixweightError(
                f"train: 'mixing.odm.exploration' must be in (0, 1/k] = (0, {1.0 / k:.6g}] for the {k} sampled domains "
                f"(the exploration mass k * epsilon cannot exceed 1), got {exploration}"
            )
        self.rewards = torch.zeros(len(self.domains), dtype=torch.float64)

    @classmethod
    def from_config(cls, config, corpus, prior: list[float]) -> "ODMMixer":
        odm = config.mixing.options(cls.name)
        return cls(corpus.manifest.domains, prior, config.mixing.every, odm.alpha, odm.exploration, odm.reward)

    @classmethod
    def from_record(cls, method: dict, domains: list[str], prior: list[float], every: int) -> "ODMMixer":
        exploration = method["exploration"]
        fixed = None if exploration == DECAYING else exploration
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, (int, float))):
            raise MixweightError(f"'method.exploration' must be a number or {DECAYING!r}, got {exploration!r}")
        return cls(domains, prior, every, float(method["alpha"]), fixed, method["reward"])

    def restore_phase(self, vector) -> None:
        self.rewards = vector("signal")  # the rewards at the phase's start

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        losses = result.losses.detach().to(torch.float64)
        ones, k = torch.ones_like(losses), len(self.domains)
        means, present = domain_means(losses, ones, result.domains, torch.isfinite(losses), k)
        present = present & self.active
        if self.reward == "smoothed":
            self.rewards = odm_smoothed_rewards(self.rewards, means, present, self.alpha)
        else:  # the samples each domain had in the step, against the N pi_i expected
            counts = torch.bincount(result.domains.long().cpu(), minlength=k).to(torch.float64)
            counts = torch.where(present, counts, torch.zeros_like(counts))
            self.rewards = exp3_rewards(self.rewards, means, counts, losses.numel(), self.current.clamp(min=1e-300))
        self.steps += 1

    def exploration(self, t: int) -> float:
        return exp3_exploration(int(self.active.sum()), t, self.fixed)

    def policy(self) -> torch.Tensor:
        rewards, t = self.rewards[self.active], self.steps
        if self.reward == "smoothed":
            return odm_smoothed_policy(rewards, self.base, self.exploration(t))
        return exp3_policy(rewards, self.base, self.exploration(t - 1), self.exploration(t))

    def signal(self) -> list[float]:
        return self.rewards.tolist()

    def options(self) -> dict:
        signal = "smoothed exp(loss) R" if self.reward == "smoothed" else "cumulative importance-weighted loss / 10 R"
        return {
            "reward": self.reward,
            "alpha": self.alpha,
            "exploration": DECAYING if self.fixed is None else self.fixed,
            "signal": f"{signal} at the phase's start",
        }

    def step_metrics(self) -> dict:
        metrics = super().step_metrics()
        metrics["online_mixing"]["exploration"] = self.exploration(self.steps)
        return metrics

    def _check_form(self, state: dict) -> None:
        if "reward" not in state:
            raise MixweightError(
                "its online:odm state comes from an earlier mixweight, whose reward (smoothed loss / pi, a policy "
                f"that flattens back to the prior) this version replaced by the official code's; {EARLIER}"
            )
        if state["reward"] != self.reward:
            raise ValueError(f"online:odm state has reward {state['reward']!r}, this run {self.reward!r}")

    def _method_state(self) -> dict:
        return {"reward": self.reward, "rewards": self.rewards.tolist()}

    def _load_method_state(self, state: dict) -> None:
        self.rewards = state_vector(state["rewards"], len(self.domains), "online mixing 'rewards'")


MIXER = ODMMixer
