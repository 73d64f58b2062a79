"""The per-step weightings the trainer can use: the plain mean, or loss-based sample weights."""

from __future__ import annotations

import torch

from mixweight.train.config import TrainConfig
from mixweight.train.step import MeanWeighting, StepWeighting
from mixweight.weighting import RSchedule, SampleWeighting, default_warmup_steps


class SampleWeightingStep(StepWeighting):
    """LinUpper / Quadratic / Extremes over the whole step's losses (all ranks, all micro-batches)."""

    def __init__(self, weighting: SampleWeighting):
        self.weighting = weighting

    def weights(
        self, losses: torch.Tensor, domains: torch.Tensor, step: int, signal: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.weighting.weights(losses, step).to(torch.float32)


def step_weighting_from_config(config: TrainConfig) -> StepWeighting:
    """The config's sample weighting (validated by TrainConfig.validate); "none" is the plain mean."""
    block = config.sample_weighting
    warmup = block.warmup_steps if block.warmup_steps is not None else default_warmup_steps(config.steps)
    schedule = RSchedule(kind=block.schedule, r=block.r, r_start=block.start, warmup_steps=warmup)
    weighting = SampleWeighting(block.name, schedule, cap=block.cap)
    return MeanWeighting() if weighting.is_uniform else SampleWeightingStep(weighting)
