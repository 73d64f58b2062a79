"""The temperature schedule for sample weights (the paper's "curriculum"; docs/algorithms.md section 1.6).

Early in training every loss is high and noisy, so the paper starts near-uniform (r = 100)
and switches to the target r after W steps; the GPT-2 code instead trains on the plain
mean loss for the first W steps ("burn-in"). Linear and cosine anneals are offered as
smoother versions of the switch. The anneal is linear (or half-cosine) in r itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from mixweight.errors import MixweightError
from mixweight.weighting.strategies import unknown_choice


def _step(s: "RSchedule", t: int) -> float | None:
    return s.r_start if t < s.warmup_steps else s.r


def _linear(s: "RSchedule", t: int) -> float | None:
    if t >= s.warmup_steps:
        return s.r
    return s.r_start + (s.r - s.r_start) * t / s.warmup_steps


def _cosine(s: "RSchedule", t: int) -> float | None:
    if t >= s.warmup_steps:
        return s.r
    return s.r + (s.r_start - s.r) * 0.5 * (1.0 + math.cos(math.pi * t / s.warmup_steps))


def _burnin(s: "RSchedule", t: int) -> float | None:
    return None if t < s.warmup_steps else s.r


# The default warm-up: the first 5% of a run's steps at r_start (docs/algorithms.md section 1.6). The GPT-2 code
# trains its first 1000 of 20000 steps on the plain mean; fms-fsdp's 2000 steps are its LR warm-up length,
# min(2000, steps / 20), for runs of 40000 steps and more: both are 5% of the run.
DEFAULT_WARMUP_FRACTION = 0.05


def default_warmup_steps(run_steps: int) -> int:
    """The warm-up of a run of `run_steps` optimizer steps when none is given: DEFAULT_WARMUP_FRACTION of it."""
    return int(round(DEFAULT_WARMUP_FRACTION * run_steps))


SCHEDULES: dict[str, Callable[["RSchedule", int], float | None]] = {
    "step": _step,
    "linear": _linear,
    "cosine": _cosine,
    "burnin": _burnin,
}


@dataclass(frozen=True)
class RSchedule:
    """r as a function of the optimizer step.

    - kind "step": r_start for step < warmup_steps, then r (the 1.4B/7B code: 100 -> r at 2000).
    - kind "linear" / "cosine": anneal from r_start at step 0 to r at warmup_steps, then r.
    - kind "burnin": ``r_at`` returns None for step < warmup_steps, meaning "use the plain
      mean loss" (the GPT-2 code's burn-in), then r.
    warmup_steps = 0 means the target r from step 0 for every kind.
    """

    kind: str = "step"
    r: float = 0.4
    r_start: float = 100.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise unknown_choice("r schedule kind", self.kind, list(SCHEDULES))
        for name in ("r", "r_start"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise MixweightError(f"RSchedule.{name} must be a number > 0, got {value!r}")
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise MixweightError(f"RSchedule.warmup_steps must be an integer >= 0, got {w!r}")

    def r_at(self, step: int) -> float | None:
        """The temperature at optimizer step ``step`` (>= 0); None means plain mean loss."""
        if step < 0:
            raise MixweightError(f"step must be >= 0, got {step}")
        value = SCHEDULES[self.kind](self, step)
        return None if value is None else float(value)
