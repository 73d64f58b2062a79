"""Instance-level loss-based sample weights (Sow et al., ICLR 2025).

Pure tensor functions: the caller computes per-sample losses, gathers them over ranks,
and minimizes sum_i w_i l_i with ``w = sample_weights(losses)`` or
``SampleWeighting(...).weights(losses, step)``. Arguments are checked once, by the
constructors (``SampleWeighting``, ``RSchedule``); the functions assume valid values.
"""

from mixweight.weighting.sample_weighting import SampleWeighting, uniform_weights
from mixweight.weighting.schedule import DEFAULT_WARMUP_FRACTION, SCHEDULES, RSchedule, default_warmup_steps
from mixweight.weighting.strategies import SAMPLE_WEIGHTINGS, STRATEGIES, get_strategy, normalize_losses
from mixweight.weighting.weights import sample_weights, weight_stats

__all__ = [
    "DEFAULT_WARMUP_FRACTION",
    "SAMPLE_WEIGHTINGS",
    "SCHEDULES",
    "STRATEGIES",
    "RSchedule",
    "SampleWeighting",
    "default_warmup_steps",
    "get_strategy",
    "normalize_losses",
    "sample_weights",
    "uniform_weights",
    "weight_stats",
]
