"""One optimizer step, top to bottom: micro-batches -> per-sample losses -> weights -> gradients.

The loop hands `accumulate_gradients` the step's micro-batches and a `StepWeighting`, the small
interface a method implements (below); this module does the rest, and is the one place where a
step's losses, weights and gradients are made (DoGE's step reuses its parts).

The weighting group is the whole optimizer step: every micro-batch of gradient accumulation on
every process, in the step's global order (process-major: rank 0's micro-batches in order, then
rank 1's, ...; `micro_batch_slices`). The step minimizes the weighted loss sum_i w_i * l_i over
that group with weights summing to 1, so uniform weights give exactly the plain mean loss
(docs/algorithms.md section 1.1).

How accumulation stays exact:
- The plain mean (`needs_whole_step` False) backpropagates micro-batch by micro-batch with
  weight 1/N; samples with a non-finite loss get weight 0 and, by linearity of gradients, the
  accumulated gradient is rescaled by N / N_finite at the end. No extra work.
- A weighting whose weights need the whole group's losses (min/max/softmax over the step),
  with one micro-batch: forward, all-gather the N detached losses (N floats), weight,
  backward. No extra work beyond the gather.
- The same with several micro-batches: a no-grad forward over all micro-batches first
  yields the group's losses, then each micro-batch is forwarded again with gradients
  and weighted. Cost: one extra forward pass (about a third of a step). This assumes
  the forward is deterministic (no dropout: mixweight's model specs set it to 0).

`sample_weighting.scope="micro_batch"` trades exactness for that third: each micro-batch (on all
processes) is its own weighting group, weighted from its own gathered losses, and the step's
weighted loss is the mean of the micro-batches' weighted losses, (1/M) sum_m sum_{i in m} w_i l_i.
No extra forward. With one micro-batch both scopes are the same computation.

Keeping all micro-batches' autograd graphs instead (forward all with grad, weight, one
backward) would also be exact without the extra forward, but holds M micro-batches of
activations: exactly the memory that accumulation exists to avoid, and one micro-batch of
M x B samples (grad_accum 1) is then the same exact computation, as large and as fast
(benchmarks/RESULTS.md measured both); it is not offered.

DDP averages gradients over processes, so each process scales its part of the weighted loss
by the world size to obtain the gradient of the global sum; gradients are all-reduced only in
the last micro-batch's backward (`mixweight.train.parallel.grad_sync`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from mixweight.core.chunked_loss import lm_token_losses, sample_means
from mixweight.core.distributed import World, all_gather_cat
from mixweight.errors import MixweightError
from mixweight.train.parallel import grad_sync
from mixweight.weighting import uniform_weights


class StepWeighting:
    """How a step's per-sample losses become weights: the interface a new weighting implements.

    Override `weights`; every other member has a default that does nothing:

    - `needs_whole_step` (default True): a sample's weight depends on the other samples' losses,
      so the step weighs the whole group before any backward (see the module docstring). Only the
      plain mean (`MeanWeighting`) sets False: the step then backpropagates each micro-batch at
      weight 1/N as it goes and uses `weights` for the record alone.
    - `sample_signal(input_ids, token_losses, mask)`: a per-sample statistic [B, ...] computed
      without gradient from each micro-batch's detached per-token losses [B, L-1] (fp32, 0 where
      ignored) and counted-token mask, inside the step's autocast context (DoReMi's excess loss
      over a reference model). It gets losses, never logits, so it works with either `loss_impl`.
      The step gathers it across processes like the losses and passes it to `weights` as
      `signal`. Default: None (no signal).
    - `state_dict()` / `load_state_dict(state)`: JSON state saved in every checkpoint (default: none).
    - `step_metrics()`: fields for the step's metrics record (default: none).
    - `extra_flops(shape, tokens)`: the FLOPs of the work it adds to a step of `tokens` tokens beyond
      the model's forward and backward, by name (DoReMi: a reference forward; default: none;
      mixweight/train/compute.py).
    """

    needs_whole_step = True

    def sample_signal(
        self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        return None

    def weights(
        self, losses: torch.Tensor, domains: torch.Tensor, step: int, signal: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weights [N] summing to 1 over the finite ones of the step's `losses` [N] (global order, detached).

        `domains` [N]: each sample's domain id; `step`: the optimizer step (0-based); `signal`:
        the gathered `sample_signal` (None when the weighting has none).
        """
        raise NotImplementedError(f"{type(self).__name__} must define weights()")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def step_metrics(self) -> dict:
        return {}

    def extra_flops(self, shape, tokens: int) -> dict[str, float]:
        return {}


class SignalProbe(Protocol):
    """A per-sample statistic the step measures for someone other than the weighting (an online mixer: online
    DoReMi's excess loss over a reference model). Called like a weighting's `sample_signal`, on every micro-batch
    that is forwarded with its losses recorded; the step gathers it across processes into `StepResult.signal`."""

    def sample_signal(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, ...] without gradient, from the micro-batch's detached per-token losses and counted-token mask."""

    def extra_flops(self, shape, tokens: int) -> dict[str, float]:
        """The FLOPs of its work per step of `tokens` tokens, by name (mixweight/train/compute.py)."""


class MeanWeighting(StepWeighting):
    """The plain mean loss over the samples whose loss is finite."""

    needs_whole_step = False

    def weights(
        self, losses: torch.Tensor, domains: torch.Tensor, step: int, signal: torch.Tensor | None = None
    ) -> torch.Tensor:
        return uniform_weights(losses)


@dataclass
class StepResult:
    losses: torch.Tensor  # [N] detached per-sample losses of the whole step (global order)
    domains: torch.Tensor  # [N] domain ids
    weights: torch.Tensor  # [N] the sample weights that were applied (sum 1 over finite samples)
    weighted_loss: float  # sum_i w_i * l_i over finite samples (metrics.jsonl key "weighted_loss")
    n_finite: int
    signal: torch.Tensor | None = None  # [N, ...] the probe's per-sample signal (float64, CPU), None without one

    @classmethod
    def of(
        cls, losses: torch.Tensor, domains: torch.Tensor, weights: torch.Tensor, signal: torch.Tensor | None = None
    ) -> "StepResult":
        """The record of a step that applied `weights` to `losses` (global order; non-finite losses count 0)."""
        finite = torch.isfinite(losses)
        value = (weights * torch.where(finite, losses, torch.zeros_like(losses))).sum().item()
        signal = None if signal is None else signal.detach().to("cpu", torch.float64)
        return cls(losses.cpu(), domains.cpu(), weights.detach().cpu(), value, int(finite.sum()), signal)

    @property
    def mean_loss(self) -> float:
        finite = torch.isfinite(self.losses)
        return self.losses[finite].mean().item() if finite.any() else float("nan")


def to_device(micro_batches: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in mb.items()} for mb in micro_batches]


def micro_batch_slices(micro_batches: list[dict], world: World) -> list[slice]:
    """Each of this process's micro-batches as a slice of the step's global order.

    The global order is process-major (what `all_gather_cat` of the concatenated micro-batches
    gives): rank r's samples start at r * n_local, and its micro-batches follow one another.
    Every process holds the same number of samples.
    """
    start = world.rank * sum(len(mb["domain"]) for mb in micro_batches)
    slices = []
    for mb in micro_batches:
        slices.append(slice(start, start + len(mb["domain"])))
        start += len(mb["domain"])
    return slices


def _forward_losses(model, batch: dict, autocast, signals: "list[_SignalCollector]" = (), loss_impl: str = "auto"):
    """Per-sample losses [B] (fp32) of a micro-batch, with gradient; records the sample signals asked for."""
    with autocast or nullcontext():  # the run's bf16 autocast, or none
        token_losses, mask = lm_token_losses(model, batch["input_ids"], loss_impl)
        for collector in signals:
            collector.add(batch["input_ids"], token_losses, mask)
    return sample_means(token_losses, mask)


class _SignalCollector:
    """One source's sample signals (the weighting's, or a probe's) of a step's micro-batches, in order."""

    def __init__(self, source: "StepWeighting | SignalProbe | None"):
        self.source = source
        self.parts: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> None:
        part = None if self.source is None else self.source.sample_signal(input_ids, token_losses.detach(), mask)
        if part is not None:
            self.parts.append(part.float())

    def gathered(self, world: World) -> torch.Tensor | None:
        return all_gather_cat(torch.cat(self.parts), world) if self.parts else None


def _weighted_backward(losses: torch.Tensor, weights: torch.Tensor, world: World) -> None:
    """Backward of this process's part of sum_i w_i l_i (non-finite losses count 0), times the world size."""
    finite = torch.isfinite(losses.detach())
    safe_losses = torch.where(finite, losses, torch.zeros_like(losses))
    ((weights.to(losses.device) * safe_losses).sum() * world.size).backward()


def _to_step_order(group_tensors: list[torch.Tensor], world: World) -> torch.Tensor:
    """The step's global order from gathered weighting groups (each process-major within itself)."""
    chunks = [t.chunk(world.size) for t in group_tensors]
    return torch.cat([chunks[g][r] for r in range(world.size) for g in range(len(chunks))])


def accumulate_gradients(
    model,
    micro_batches: list[dict],
    weighting: StepWeighting,
    step: int,
    world: World,
    autocast=None,
    loss_impl: str = "auto",
    scope: str = "step",
    probe: SignalProbe | None = None,
) -> StepResult:
    """Forward and backward every micro-batch of one step; gradients are left in `.grad`.

    `scope`: the weighting group, "step" or "micro_batch" (TrainConfig.validate checks the value);
    `probe`: a per-sample signal measured on the way, gathered into the result's `signal`.
    """
    micro_batches = to_device(micro_batches, next(model.parameters()).device)
    domains = all_gather_cat(torch.cat([mb["domain"] for mb in micro_batches]), world)
    last = len(micro_batches) - 1
    signals, probed = _SignalCollector(weighting), _SignalCollector(probe)

    def forward(mb: dict, record: bool = True) -> torch.Tensor:
        losses = _forward_losses(model, mb, autocast, (signals, probed) if record else (), loss_impl)
        if scope == "micro_batch" and signals.parts:  # its state (DoReMi's alpha) would update M times a step
            raise MixweightError(
                "train: sample_weighting.scope micro_batch is for loss-based sample weights; a step weighting "
                "with a sample signal (DoReMi) weights the whole step: use sample_weighting.scope step"
            )
        return losses

    if not weighting.needs_whole_step:  # the plain mean: 1/N per sample as we go, rescaled at the end
        n_global = len(domains)
        local = []
        for i, mb in enumerate(micro_batches):
            with grad_sync(model, i == last):
                mb_losses = forward(mb)
                _weighted_backward(mb_losses, torch.full_like(mb_losses, 1.0 / n_global), world)
            local.append(mb_losses.detach().float())
        losses = all_gather_cat(torch.cat(local), world)
        weights = weighting.weights(losses, domains, step, signal=signals.gathered(world))
        n_finite = int(torch.isfinite(losses).sum())
        if 0 < n_finite < n_global:  # linearity: rescale the 1/N gradient to 1/N_finite
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.mul_(n_global / n_finite)
        return StepResult.of(losses, domains, weights, probed.gathered(world))

    # Weighting groups: the whole step, or (scope micro_batch) each micro-batch on all processes.
    # A group of one micro-batch keeps its graph from the forward that measured its losses; a
    # group of several measures them without gradient first and forwards each again to backward.
    groups = [[i] for i in range(len(micro_batches))] if scope == "micro_batch" else [list(range(len(micro_batches)))]
    group_losses, group_weights = [], []
    for group in groups:
        keep_graph = len(group) == 1
        with grad_sync(model, group[-1] == last) if keep_graph else torch.no_grad():
            measured = [forward(micro_batches[i]) for i in group]
            losses = all_gather_cat(torch.cat(measured).detach().float(), world)
            group_domains = domains if len(groups) == 1 else all_gather_cat(micro_batches[group[0]]["domain"], world)
            weights = weighting.weights(losses, group_domains, step, signal=signals.gathered(world))
            weights = weights / len(groups)  # micro_batch scope: the mean of the M groups' weighted losses
            mine = micro_batch_slices([micro_batches[i] for i in group], world)
            if keep_graph:
                _weighted_backward(measured[0], weights[mine[0]], world)
        if not keep_graph:
            for i, where in zip(group, mine):
                with grad_sync(model, i == last):
                    _weighted_backward(forward(micro_batches[i], record=False), weights[where], world)
        group_losses.append(losses)
        group_weights.append(weights.detach())
    losses, weights = _to_step_order(group_losses, world), _to_step_order(group_weights, world)
    return StepResult.of(losses, domains, weights, probed.gathered(world))


# The names before 0.2 called a weighting rule a "reduction": kept for one release for code that subclasses them.
StepReduction, MeanReduction = StepWeighting, MeanWeighting
