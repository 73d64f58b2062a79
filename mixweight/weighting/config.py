"""The `sample_weighting:` block of a run's config: which loss-based rule weights the samples of a step, and how.

    sample_weighting: linupper                         # shorthand: the rule's name, every other key its default
    sample_weighting: {name: linupper, r: 0.4, warmup_steps: 100, scope: step}

Every value is checked once, in `validate` (where the config is read); `SampleWeighting` and `RSchedule`
then assume valid values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from mixweight.core.config import option, require
from mixweight.errors import did_you_mean
from mixweight.weighting.schedule import SCHEDULES
from mixweight.weighting.strategies import SAMPLE_WEIGHTINGS

SCOPES = ("step", "micro_batch")


@dataclass
class SampleWeightingConfig:
    SHORTHAND: ClassVar[str] = "name"  # `sample_weighting: linupper` sets the name

    name: str = option("none", "loss-based sample weights inside each step: none, linupper, quadratic or extremes")
    r: float = option(
        0.4,
        "sample-weight temperature, the paper's r: large -> uniform weights; the max/min weight ratio is at most "
        "e^(1/r)",
    )
    schedule: str = option(
        "step",
        "how r reaches its target: step (start, then r after warmup_steps), linear or cosine (anneal from start "
        "to r over warmup_steps), or burnin (plain mean loss for warmup_steps, then r)",
    )
    warmup_steps: Optional[int] = option(
        None,
        "optimizer steps before r reaches its target (default: 5% of the run's steps, the paper's curriculum: "
        "near-uniform weights at start while every loss is high, then r; the GPT-2 code burns in 1000 of 20000 "
        "steps, the 1.4B/7B code (fms-fsdp, branch reweighted-train) holds start 100 for 2000; 0: the target r from "
        "the first step, the default before 0.2: a sample-weighted run made then resumes with warmup_steps 0)",
    )
    start: float = option(100.0, "r during the warmup (step) or at step 0 (linear, cosine); unused by burnin")
    cap: Optional[float] = option(
        None, "optional cap c: no sample weight above c/N (the convergence theorem's condition with c=2)"
    )
    scope: str = option(
        "step",
        "the group sample weights are normalized over: step (all micro-batches on all processes, exact; with "
        "grad_accum > 1 one extra no-grad forward) or micro_batch (each micro-batch on all processes, no extra cost)",
    )
    histogram_every: int = option(
        100, "log a histogram of the sample weights (each times the batch size) every this many steps"
    )

    def __post_init__(self) -> None:
        if isinstance(self.name, str):  # names are case-insensitive: lower-cased here, where they enter
            self.name = self.name.lower()

    def validate(self) -> None:
        where = "train: 'sample_weighting"
        require(
            self.name in SAMPLE_WEIGHTINGS,
            f"{where}.name' {self.name!r} is not a sample weighting; "
            f"{did_you_mean(self.name, SAMPLE_WEIGHTINGS)}valid: {', '.join(SAMPLE_WEIGHTINGS)}",
        )
        require(
            self.schedule in SCHEDULES,
            f"{where}.schedule' {self.schedule!r} is not a schedule; "
            f"{did_you_mean(self.schedule, SCHEDULES)}valid: {', '.join(SCHEDULES)}",
        )
        # Checked here once for a run (NaN fails every comparison); the weighting functions assume valid values.
        require(self.r > 0, f"{where}.r' must be > 0, got {self.r}")
        require(self.start > 0, f"{where}.start' must be > 0, got {self.start}")
        require(
            self.cap is None or self.cap >= 1,
            f"{where}.cap' must be >= 1 (c/N can be no less than the uniform 1/N), got {self.cap}",
        )
        require(
            self.warmup_steps is None or self.warmup_steps >= 0,
            f"{where}.warmup_steps' must be >= 0, got {self.warmup_steps}",
        )
        require(self.scope in SCOPES, f"{where}.scope' must be step or micro_batch, got {self.scope!r}")
        require(
            self.histogram_every > 0,
            f"{where}.histogram_every' must be a positive integer, got {self.histogram_every}",
        )
