"""Sample-weighting strategies of Sow et al. (ICLR 2025), as pure functions of normalized loss
(docs/algorithms.md sections 1.2 and 1.3).

Each strategy maps x in [-1, 1] (the batch's losses rescaled so the lowest is -1 and the
highest +1; see ``normalize_losses`` for near-equal losses) to a score f(x);
``weights.sample_weights`` turns scores into weights with a softmax at temperature r.
Keeping f a registry of tiny pure functions lets the tests check every formula by hand and
lets a new strategy be one line.
"""

from __future__ import annotations

from typing import Callable

import torch

from mixweight.errors import MixweightError, did_you_mean

Strategy = Callable[[torch.Tensor], torch.Tensor]


def linupper(x: torch.Tensor) -> torch.Tensor:
    """f(x) = min(x + 1, 1): down-weights low losses, caps (does not boost) high losses."""
    return torch.clamp(x + 1.0, max=1.0)


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """f(x) = 1 - x^2: favours medium losses, down-weights both ends."""
    return 1.0 - x * x


def extremes(x: torch.Tensor) -> torch.Tensor:
    """f(x) = |x|: favours both the easiest and the hardest samples."""
    return x.abs()


def uniform(x: torch.Tensor) -> torch.Tensor:
    """f(x) = 0: every sample scores the same, so the softmax is exactly 1/N (plain mean loss)."""
    return torch.zeros_like(x)


STRATEGIES: dict[str, Strategy] = {
    "linupper": linupper,
    "quadratic": quadratic,
    "extremes": extremes,
    "uniform": uniform,
}

# Config files and CLI flags say "none" for "no reweighting": the uniform strategy, the plain mean loss.
ALIASES: dict[str, str] = {"none": "uniform"}

# The names a training config's `sample_weighting` takes: "none", then every reweighting strategy.
SAMPLE_WEIGHTINGS: tuple[str, ...] = (*ALIASES, *(name for name in STRATEGIES if name not in ALIASES.values()))


def unknown_choice(what: str, name: object, valid: list[str]) -> MixweightError:
    """The error for a name not in a registry: lists the valid names and suggests the closest."""
    hint = did_you_mean(str(name).lower(), valid, cutoff=0.6)
    return MixweightError(f"unknown {what} '{name}'; {hint}valid: {', '.join(valid)}")


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by (case-insensitive) name; raises MixweightError (a ValueError) if unknown."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise unknown_choice("sample-weighting strategy", name, sorted(STRATEGIES) + sorted(ALIASES))
    return STRATEGIES[key]


SPREAD_FLOOR = 1e-6  # the paper's code: spreads below this are rounding noise, not a ranking


def normalize_losses(losses: torch.Tensor) -> torch.Tensor:
    """x_i = (2 l_i - l_max - l_min) / max(l_max - l_min, 1e-6), over all entries of ``losses``.

    For a spread at or above the floor this is exactly the paper's 2 (l_i - l_min) / spread - 1:
    the lowest loss maps to -1, the highest to +1. Below the floor the range is centred on 0
    and shrinks with the spread (x in [-spread/1e-6, spread/1e-6]), so near-equal losses get
    near-uniform weights and equal losses get x = 0 (uniform weights). The uncentred form
    2 (l_i - l_min) / 1e-6 - 1 would put near-equal losses near -1 and a single loss one ulp
    above them near 0: at r = 0.4 LinUpper then gives it about 11x the others' weight.
    x is continuous in the losses across the floor. Losses must be finite (``sample_weights``
    drops non-finite ones first). Works in the input's dtype; pass float64 to keep huge
    losses (1e30) exact.
    """
    if losses.numel() == 0:
        return losses.clone()
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if span == 0:
        return torch.zeros_like(losses)
    denom = torch.clamp(span, min=SPREAD_FLOOR)
    # span / denom is exactly 1.0 when span >= the floor, so there the result is bit-identical
    # to the paper's formula; below it, subtracting span / denom (not 1) centres the range.
    return 2.0 * (losses - lo) / denom - span / denom
