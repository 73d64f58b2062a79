"""Sample-weighting strategies of Sow et al. (ICLR 2025), as pure functions of normalized loss.

Each strategy maps x in [-1, 1] (the batch's losses rescaled so the lowest is -1 and the
highest +1) to a score f(x); ``weights.sample_weights`` turns scores into weights with a
softmax at temperature r. Keeping f a registry of tiny pure functions lets the tests check
every formula by hand and lets a new strategy be one line (ALGORITHMS.md section 1.2).
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch

from mixweight.errors import MixweightError

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

# Config files and CLI flags may say "none" for "no reweighting".
ALIASES: dict[str, str] = {"none": "uniform"}


def unknown_choice(what: str, name: object, valid: list[str]) -> MixweightError:
    """The error for a name not in a registry: lists the valid names and suggests the closest."""
    close = difflib.get_close_matches(str(name).lower(), valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return MixweightError(f"unknown {what} '{name}'; valid: {', '.join(valid)}.{hint}")


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by (case-insensitive) name; raises MixweightError (a ValueError) if unknown."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise unknown_choice("sample-weighting strategy", name, sorted(STRATEGIES) + sorted(ALIASES))
    return STRATEGIES[key]


def normalize_losses(losses: torch.Tensor) -> torch.Tensor:
    """x_i = 2 (l_i - l_min) / max(l_max - l_min, 1e-6) - 1, over all entries of ``losses``.

    The 1e-6 floor (from the paper's code) keeps near-equal batches from being stretched
    to the full [-1, 1] range by rounding noise. All-equal losses give x = 0 everywhere (so
    every strategy gives uniform weights), not the -1 the formula would give. Losses must be
    finite (``sample_weights`` drops non-finite ones before calling this). Works in the
    input's dtype; pass float64 to keep huge losses (1e30) exact.
    """
    if losses.numel() == 0:
        return losses.clone()
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if span == 0:
        return torch.zeros_like(losses)
    return 2.0 * (losses - lo) / torch.clamp(span, min=1e-6) - 1.0
