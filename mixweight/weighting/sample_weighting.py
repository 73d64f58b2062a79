"""SampleWeighting: strategy + r schedule + cap in one object, for the training loop.

The trainer asks ``weights(losses, step)`` once per optimizer step with the losses of the
whole global batch (it gathers them across ranks itself: this module never touches
torch.distributed, so it runs and tests without a process group).
"""

from __future__ import annotations

import torch

from mixweight.errors import MixweightError
from mixweight.weighting.schedule import RSchedule
from mixweight.weighting.strategies import ALIASES, get_strategy
from mixweight.weighting.weights import sample_weights


def uniform_weights(losses: torch.Tensor) -> torch.Tensor:
    """1/N_finite on finite losses, 0 on NaN/inf (all zeros if none is finite): the mean loss."""
    with torch.no_grad():
        finite = torch.isfinite(losses.detach())
        dtype = torch.float64 if losses.dtype == torch.float64 else torch.float32
        n = int(finite.sum())
        out = torch.zeros(losses.shape, dtype=dtype, device=losses.device)
        if n:
            out[finite] = 1.0 / n
        return out


def _check_cap(cap: float | None) -> float | None:
    if cap is None:
        return None
    cap = float(cap)
    if not cap >= 1:  # also refuses NaN
        raise MixweightError(f"cap must be >= 1 (weights are capped at cap/N and N weights must sum to 1), got {cap}")
    return cap


class SampleWeighting:
    """Per-step sample weights: ``SampleWeighting("linupper", RSchedule(...), cap=2.0)``.

    The library's one check of its arguments: the strategy name, the cap (>= 1) and, through
    RSchedule, r (> 0); ``sample_weights`` then assumes them valid.

    ``schedule`` may be an RSchedule or a plain number (constant r). Strategy "uniform" or
    "none" (its alias in strategies.ALIASES, the one place that knows it), and any step where
    the schedule says burn-in (r_at is None), give exactly 1/N_finite on the finite samples (the
    ordinary mean loss), zeros on non-finite ones.
    """

    def __init__(self, strategy: str = "linupper", schedule: RSchedule | float = 0.4, cap: float | None = None) -> None:
        get_strategy(strategy)  # fail at construction, not at the first step
        key = str(strategy).lower()
        self.strategy = ALIASES.get(key, key)
        self.schedule = schedule if isinstance(schedule, RSchedule) else RSchedule(r=float(schedule))
        self.cap = _check_cap(cap)

    @property
    def is_uniform(self) -> bool:
        """True when no reweighting ever happens (strategy "uniform"/"none")."""
        return self.strategy == "uniform"

    def r_at(self, step: int) -> float | None:
        """The temperature used at ``step``; None during burn-in or for uniform weighting."""
        return None if self.is_uniform else self.schedule.r_at(step)

    def weights(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """Detached weights for the global batch's per-sample ``losses`` at optimizer ``step``."""
        r = self.r_at(step)
        if r is None:
            return uniform_weights(losses)
        return sample_weights(losses, self.strategy, r=r, cap=self.cap)

    def __repr__(self) -> str:
        return f"SampleWeighting(strategy={self.strategy!r}, schedule={self.schedule!r}, cap={self.cap!r})"
