"""Loss-based sample weights inside the Hugging Face `transformers.Trainer`.

`ReweightingTrainer` overrides only `compute_loss` (its exact 4.x signature). Per-sample
losses are gathered across DDP processes, weighted with `mixweight.weighting` (the same
function and options as `mixweight train`), and the weighted sum is scaled by the world
size because DDP averages gradients over processes.

The weighting group is one micro-batch on all processes: the HF Trainer computes the
loss of each gradient-accumulation micro-batch on its own, so with
`gradient_accumulation_steps > 1` each micro-batch is weighted separately (and HF divides
each by the accumulation steps). `mixweight train` weights the whole optimizer step
exactly; prefer it when accumulating. The logged training loss is the weighted objective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import Trainer

from mixweight.core.distributed import World, all_gather_cat
from mixweight.core.loss import IGNORE_INDEX, per_sample_loss
from mixweight.weighting import RSchedule, SampleWeighting, default_warmup_steps


def _current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    return World()


class ReweightingTrainer(Trainer):
    """A `transformers.Trainer` whose loss is sum_i w_i * l_i with LinUpper/Quadratic/Extremes weights.

    Extra keyword arguments: `sample_weighting` ("linupper", "quadratic", "extremes", "none")
    or a ready `SampleWeighting`, `r`, `r_schedule`, `r_warmup_steps`, `r_start`, `weight_cap`.
    `r_warmup_steps=None` (default) is the paper's curriculum as in `mixweight train`: r_start for the
    first 5% of the run's optimizer steps (`state.max_steps`, known once training starts), then r.
    Batches need `input_ids` (and optionally `labels`, -100 for ignored tokens, and
    `attention_mask`); without `labels` the inputs are their own labels.
    """

    def __init__(
        self,
        *args,
        sample_weighting: str | SampleWeighting = "linupper",
        r: float = 0.4,
        r_schedule: str = "step",
        r_warmup_steps: int | None = None,
        r_start: float = 100.0,
        weight_cap: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._weighting_args = None  # the schedule's length waits for state.max_steps when r_warmup_steps is None
        if isinstance(sample_weighting, SampleWeighting):
            self.sample_weighting = sample_weighting
        elif r_warmup_steps is None:
            RSchedule(kind=r_schedule, r=r, r_start=r_start)  # checks the values now, before training
            self._weighting_args = (sample_weighting, r_schedule, r, r_start, weight_cap)
            self.sample_weighting = None
        else:
            schedule = RSchedule(kind=r_schedule, r=r, r_start=r_start, warmup_steps=r_warmup_steps)
            self.sample_weighting = SampleWeighting(sample_weighting, schedule, cap=weight_cap)
        # compute_loss ignores num_items_in_batch, so HF must scale for accumulation itself.
        self.model_accepts_loss_kwargs = False
        self.last_weights: torch.Tensor | None = None  # global weights of the latest batch (for inspection)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids = inputs["input_ids"]
        labels = inputs.get("labels")
        if labels is None:
            labels = input_ids
        if "attention_mask" in inputs:
            labels = labels.masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
        outputs = model(input_ids=input_ids, attention_mask=inputs.get("attention_mask"))
        losses = per_sample_loss(outputs.logits, labels)

        world = _current_world()
        if self.sample_weighting is None:  # the default curriculum: 5% of the run, known now
            name, kind, r, r_start, cap = self._weighting_args
            warmup = default_warmup_steps(self.state.max_steps)
            schedule = RSchedule(kind=kind, r=r, r_start=r_start, warmup_steps=warmup)
            self.sample_weighting = SampleWeighting(name, schedule, cap=cap)
        global_losses = all_gather_cat(losses.detach().float(), world)
        weights = self.sample_weighting.weights(global_losses, self.state.global_step).to(losses.device, losses.dtype)
        self.last_weights = weights.detach().cpu()
        n_local = len(losses)
        mine = weights[world.rank * n_local : (world.rank + 1) * n_local]
        safe = torch.where(torch.isfinite(losses.detach()), losses, torch.zeros_like(losses))
        loss = (mine * safe).sum() * world.size
        return (loss, outputs) if return_outputs else loss
