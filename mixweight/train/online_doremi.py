"""online:doremi: DoReMi's update in the main run, on the excess loss over a reference model.

`DoReMiMixer` updates alpha every step with the offline proxy's `doremi_update` on the per-domain
excess loss; each phase samples (1 - g) alpha + g prior. The excess comes from `ExcessProbe`: one
no-grad reference forward per micro-batch, a per-sample signal the step gathers across micro-batches
and processes into `StepResult.signal`. docs/algorithms.md section 6.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from mixweight.core.chunked_loss import lm_token_losses
from mixweight.core.config import option, require
from mixweight.errors import MixweightError
from mixweight.train.compute import reference_forward
from mixweight.train.mixers import EARLIER, OnlineMixer, register_mixer, state_vector
from mixweight.train.reference import check_reference_run
from mixweight.train.step import StepResult
from mixweight.weighting.domain_update import domain_means, doremi_update, toward_prior


@dataclass
class OnlineDoReMiOptions:
    """`mixing: {doremi: {...}}`: online DoReMi's options."""

    reference: Optional[str] = option(
        None,
        "online:doremi: the reference run directory (`mixweight weights doremi` leaves it at "
        "<out stem>.work/round-0/reference), trained on this corpus",
    )
    eta: float = option(1.0, "online:doremi: step size of the exponentiated-gradient update")
    smoothing: float = option(1e-3, "online:doremi: smoothing c, c/k of uniform mixed into the weights")
    exploration: float = option(
        0.1,
        "online:doremi: each phase samples (1 - g) alpha + g prior, so no domain leaves the batches and freezes its "
        "excess loss (0: sample alpha itself)",
    )

    def validate(self) -> None:
        require(self.eta > 0, f"train: 'mixing.doremi.eta' must be > 0, got {self.eta}")
        require(
            0 <= self.smoothing < 1,
            f"train: 'mixing.doremi.smoothing' must be in [0, 1), got {self.smoothing}",
        )
        require(
            0 <= self.exploration <= 1,
            f"train: 'mixing.doremi.exploration' must be in [0, 1] (the prior's share of each phase), got "
            f"{self.exploration}",
        )


def load_reference(run_dir, corpus):
    """The reference run's newest model, after `check_reference_run` (this corpus, this vocabulary)."""
    from mixweight.core.model import load_model

    latest = check_reference_run(run_dir, corpus, "train: mixing.doremi.reference")
    return load_model(latest / "model").eval().requires_grad_(False)


class ExcessProbe:
    """DoReMi's per-sample excess signal, the offline proxy's (docs/algorithms.md section 2.2): per sample, the sum
    over counted tokens of max(l_model - l_ref, 0) and the token count [B, 2], from the step's detached per-token
    losses and one no-grad reference forward, under the step's autocast."""

    def __init__(self, reference: torch.nn.Module, loss_impl: str = "auto"):
        self.reference, self.loss_impl = reference, loss_impl

    @torch.no_grad()
    def sample_signal(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if next(self.reference.parameters()).device != input_ids.device:
            self.reference.to(input_ids.device)
        ref_loss, _ = lm_token_losses(self.reference, input_ids, self.loss_impl)
        excess = torch.clamp(token_losses.float() - ref_loss, min=0.0) * mask
        return torch.stack([excess.sum(dim=1), mask.sum(dim=1).float()], dim=1)

    def extra_flops(self, shape, tokens: int) -> dict[str, float]:
        return reference_forward(self.reference, shape, tokens)


@register_mixer
class DoReMiMixer(OnlineMixer):
    """Online DoReMi: alpha <- doremi_update(alpha, lambda) every step on the excess loss; each phase samples
    (1 - gamma) alpha + gamma prior, so no domain drops out of the batches and freezes its excess.

    docs/algorithms.md section 6.3."""

    name = "doremi"
    Options = OnlineDoReMiOptions
    RECORDED = ("eta", "smoothing", "exploration")
    READS_STAGE, STAGE_KEY = "doremi", "mixing.doremi.reference"

    def __init__(
        self,
        domains,
        prior,
        every,
        eta: float = 1.0,
        smoothing: float = 1e-3,
        exploration: float = 0.1,
        probe: ExcessProbe | None = None,
    ):
        super().__init__(domains, prior, every)
        self.probe, self.eta, self.smoothing = probe, float(eta), float(smoothing)
        self.gamma = float(exploration)
        self.alpha = self.prior.clone()
        self.excess = torch.zeros(len(self.domains), dtype=torch.float64)  # lambda_0 = 0 (algorithms.md 2.5)

    def update(self, signal: torch.Tensor, losses: torch.Tensor, domains: torch.Tensor) -> None:
        """One step's update from the gathered [N, 2] signal (the offline proxy's arithmetic)."""
        excess_sum, counts = signal[:, 0], signal[:, 1]
        valid = torch.isfinite(losses.detach().cpu()) & torch.isfinite(excess_sum) & (counts > 0)
        measured, present = domain_means(excess_sum, counts, domains.cpu(), valid, len(self.domains))
        self.excess = torch.where(present, measured, self.excess)
        active = self.active
        alpha = torch.zeros_like(self.alpha)
        alpha[active] = doremi_update(self.alpha[active], self.excess[active], self.eta, self.smoothing)
        self.alpha = alpha

    @classmethod
    def check_config(cls, config, require_paths: bool = True) -> None:
        require(
            config.mixing.options(cls.name).reference is not None or not require_paths,
            "train: domain_weights online:doremi needs 'mixing.doremi.reference', the reference run directory "
            "(`mixweight weights doremi` leaves it at <out stem>.work/round-0/reference; the pipeline passes its own)",
        )
        require(
            config.sample_weighting.scope == "step",
            "train: online:doremi measures the excess loss of the whole step (a sample signal); sample_weighting."
            "scope micro_batch cannot carry it: use sample_weighting.scope step",
        )

    @classmethod
    def check_unused(cls, config) -> None:
        require(
            config.mixing.options(cls.name).reference is None,
            f"train: 'mixing.doremi.reference' is for domain_weights online:doremi, not '{config.domain_weights}'",
        )

    @classmethod
    def from_config(cls, config, corpus, prior: list[float]) -> "DoReMiMixer":
        options = config.mixing.options(cls.name)
        probe = ExcessProbe(load_reference(options.reference, corpus), config.loss_impl)
        every, eta, smoothing = config.mixing.every, options.eta, options.smoothing
        return cls(corpus.manifest.domains, prior, every, eta, smoothing, options.exploration, probe)

    @classmethod
    def from_record(cls, method: dict, domains: list[str], prior: list[float], every: int) -> "DoReMiMixer":
        gamma = float(method["exploration"])
        if not 0 <= gamma <= 1:
            raise MixweightError(f"'method.exploration' must be in [0, 1], got {gamma}")
        return cls(domains, prior, every, float(method["eta"]), float(method["smoothing"]), gamma)

    def restore_phase(self, vector) -> None:
        self.alpha = vector("alpha")

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        if result.signal is None:
            raise MixweightError("train: online:doremi: the step produced no excess-loss signal")
        self.update(result.signal, result.losses, result.domains)
        self.steps += 1

    def policy(self) -> torch.Tensor:
        return toward_prior(self.alpha[self.active], self.base, self.gamma)

    def signal(self) -> list[float]:
        return self.excess.tolist()

    def phase_state(self) -> dict:
        return {"alpha": self.alpha.tolist()}

    def options(self) -> dict:
        return {
            "eta": self.eta,
            "smoothing": self.smoothing,
            "exploration": self.gamma,
            "signal": "excess loss lambda at the phase's start; alpha: DoReMi's weights, sampled as "
            "(1 - exploration) alpha + exploration prior",
        }

    def _check_form(self, state: dict) -> None:
        if "exploration" not in state:
            raise MixweightError(
                "its online:doremi state comes from an earlier mixweight, which sampled alpha itself (a domain near "
                f"alpha 0 was never observed again); this version mixes in an exploration floor; {EARLIER}"
            )
        if float(state["exploration"]) != self.gamma:
            raise ValueError(f"online:doremi state has exploration {state['exploration']}, this run {self.gamma}")

    def _method_state(self) -> dict:
        return {"exploration": self.gamma, "alpha": self.alpha.tolist(), "excess": self.excess.tolist()}

    def _load_method_state(self, state: dict) -> None:
        k = len(self.domains)
        self.alpha = state_vector(state["alpha"], k, "online mixing 'alpha'")
        self.excess = state_vector(state["excess"], k, "online mixing 'excess'")


MIXER = DoReMiMixer
