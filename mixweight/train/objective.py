"""What one optimizer step computes: the seam where sample weights and domain methods plug in.

The loop owns data, optimizer, clipping, logging and checkpoints; a `StepObjective` owns how
the step's gradients are made. The default, `WeightedLoss`, is `accumulate_gradients`
(mixweight/train/step.py) with a `StepWeighting`: the plain mean, LinUpper, ... (step_weighting.py),
or DoReMi's domain weights. DoGE, which needs one gradient per domain, is an objective of its own
(mixweight/domain/doge.py). An objective's state (domain weights, running averages) is saved in
every checkpoint (state.json's "objective").
"""

from __future__ import annotations

from typing import Protocol

from mixweight.core.distributed import World
from mixweight.core.flops import forward_flops
from mixweight.train.step import SignalProbe, StepResult, StepWeighting, accumulate_gradients


class StepObjective(Protocol):
    def compute_gradients(
        self, model, micro_batches: list[dict], step: int, world: World, autocast, lr: float
    ) -> StepResult:
        """Leave the step's gradients in `.grad`; `lr` is the learning rate this step will use."""

    def state_dict(self) -> dict:
        """JSON-serializable state, restored by `load_state_dict` on resume."""

    def load_state_dict(self, state: dict) -> None: ...

    def step_metrics(self) -> dict:
        """Extra fields for the latest step's metrics record (may be empty)."""

    # Optional: `extra_flops(model, shape, tokens, micro_batches) -> {name: FLOPs per step}`, the work the step
    # adds to the model's forward and backward on its tokens (mixweight/train/compute.py); none when absent.


class WeightedLoss:
    """The weighted loss sum_i w_i * l_i over the step, with weights from a StepWeighting.

    `loss_impl` (auto, full, chunked) is how per-sample losses are computed (chunked_loss.py);
    `scope` the weighting group (step: exact; micro_batch: each micro-batch, no extra forward).
    The weighting's state and metrics are the objective's.
    """

    def __init__(
        self, weighting: StepWeighting, loss_impl: str = "auto", scope: str = "step", probe: SignalProbe | None = None
    ):
        self.weighting, self.loss_impl, self.scope, self.probe = weighting, loss_impl, scope, probe

    @classmethod
    def from_config(cls, config, probe: SignalProbe | None = None) -> "WeightedLoss":
        """The config's sample weighting; `probe`: the run's mixer's (online DoReMi's excess signal)."""
        from mixweight.train.step_weighting import step_weighting_from_config

        return cls(step_weighting_from_config(config), config.loss_impl, config.sample_weighting.scope, probe)

    def compute_gradients(self, model, micro_batches, step, world, autocast, lr) -> StepResult:
        return accumulate_gradients(
            model, micro_batches, self.weighting, step, world, autocast, self.loss_impl, self.scope, self.probe
        )

    def state_dict(self) -> dict:
        return self.weighting.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.weighting.load_state_dict(state)

    def step_metrics(self) -> dict:
        return self.weighting.step_metrics()

    def extra_flops(self, model, shape, tokens: int, micro_batches: int) -> dict[str, float]:
        extra = {}
        if self.weighting.needs_whole_step and self.scope == "step" and micro_batches > 1:
            extra["whole_step_forward"] = forward_flops(shape, tokens)  # losses of every micro-batch before backward
        probe = {} if self.probe is None else self.probe.extra_flops(shape, tokens)
        return {**extra, **self.weighting.extra_flops(shape, tokens), **probe}
