"""One optimizer step's gradients: per-sample losses -> sample weights -> weighted backward.

The weighting group is the whole optimizer step: every micro-batch of gradient
accumulation on every process. The objective is sum_i w_i * l_i over that group with
weights summing to 1, so uniform weights give exactly the plain mean loss.

How accumulation stays exact:
- Reductions whose weights do not depend on other samples' losses (the plain mean)
  backpropagate micro-batch by micro-batch with weight 1/N; samples with a non-finite
  loss get weight 0 and, by linearity of gradients, the accumulated gradient is
  rescaled by N / N_finite at the end. No extra work.
- Reductions that need the whole group's losses (min/max/softmax over the step) with
  one micro-batch: forward, all-gather the N detached losses (N floats), weight,
  backward. No extra work beyond the gather.
- The same with several micro-batches: a no-grad forward over all micro-batches first
  yields the group's losses, then each micro-batch is forwarded again with gradients
  and weighted. Cost: one extra forward pass (about a third of a step). This assumes
  the forward is deterministic (no dropout: mixweight's model specs set it to 0).

`weighting_scope="micro_batch"` trades exactness for that third: each micro-batch (on all
processes) is its own weighting group, weighted from its own gathered losses, and the step's
objective is the mean of the micro-batches' weighted losses, (1/M) sum_m sum_{i in m} w_i l_i.
No extra forward. With one micro-batch both scopes are the same computation.

Keeping all micro-batches' autograd graphs instead (forward all with grad, weight, one
backward) would also be exact without the extra forward, but holds M micro-batches of
activations: exactly the memory that accumulation exists to avoid, and one micro-batch of
M x B samples (grad_accum 1) is then the same exact computation, as large and as fast
(benchmarks/RESULTS.md measured both); it is not offered.

DDP averages gradients over processes, so each process scales its part of the
objective by the world size to obtain the gradient of the global sum.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from mixweight.core.chunked_loss import lm_token_losses, sample_means
from mixweight.core.distributed import World, all_gather_cat
from mixweight.errors import MixweightError
from mixweight.weighting import uniform_weights

WEIGHTING_SCOPES = ("step", "micro_batch")


class SampleReduction(Protocol):
    """Maps the per-sample losses of a whole step (global order) to weights summing to 1.

    A reduction may also define ``sample_signal(input_ids, token_losses, mask) -> Tensor[B, ...]``:
    a per-sample statistic computed without gradient from each micro-batch's detached per-token
    losses [B, L-1] (fp32, 0 where ignored) and counted-token mask (DoReMi's excess loss over a
    reference model, for example). It is called inside the step's autocast context, and gets
    losses, never logits, so it works with either `loss_impl` (the chunked loss has no logits).
    The step gathers it across processes like the losses and passes it to ``weights`` as ``signal``.
    """

    needs_whole_step: bool  # True when a sample's weight depends on the other samples' losses

    def weights(
        self, losses: torch.Tensor, domains: torch.Tensor, step: int, signal: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class MeanReduction:
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
    objective: float  # sum_i w_i * l_i over finite samples
    n_finite: int

    @property
    def mean_loss(self) -> float:
        finite = torch.isfinite(self.losses)
        return self.losses[finite].mean().item() if finite.any() else float("nan")


class _SignalCollector:
    """The reduction's sample signals of one step's micro-batches, in order."""

    def __init__(self, fn):
        self.fn = fn
        self.parts: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> None:
        self.parts.append(self.fn(input_ids, token_losses.detach(), mask).float())

    def gathered(self, world: World) -> torch.Tensor:
        return all_gather_cat(torch.cat(self.parts), world)


def _forward_losses(
    model, batch: dict, autocast, signals: _SignalCollector | None = None, loss_impl: str = "auto"
) -> torch.Tensor:
    """Per-sample losses of a micro-batch (fp32); records the reduction's sample signal when asked."""
    with autocast or nullcontext():
        token_losses, mask = lm_token_losses(model, batch["input_ids"], loss_impl)
        if signals is not None:
            signals.add(batch["input_ids"], token_losses, mask)
    return sample_means(token_losses, mask)


def _weighted_backward(losses: torch.Tensor, weights: torch.Tensor, world: World) -> None:
    finite = torch.isfinite(losses.detach())
    safe_losses = torch.where(finite, losses, torch.zeros_like(losses))
    objective = (weights.to(losses.device) * safe_losses).sum() * world.size
    objective.backward()


def _sync_context(model, is_last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    no_sync = getattr(model, "no_sync", None)
    return nullcontext() if is_last or no_sync is None else no_sync()


def accumulate_gradients(
    model,
    micro_batches: list[dict],
    reduction: SampleReduction,
    step: int,
    world: World,
    autocast=None,
    loss_impl: str = "auto",
    scope: str = "step",
) -> StepResult:
    """Forward and backward every micro-batch of one step; gradients are left in `.grad`."""
    if scope not in WEIGHTING_SCOPES:
        raise MixweightError(f"train: 'weighting_scope' must be one of {', '.join(WEIGHTING_SCOPES)}, got {scope!r}")
    device = next(model.parameters()).device
    micro_batches = [{k: v.to(device) for k, v in mb.items()} for mb in micro_batches]
    local_domains = torch.cat([mb["domain"] for mb in micro_batches])
    domains = all_gather_cat(local_domains, world)
    n_local = len(local_domains)
    offsets = [0]
    for mb in micro_batches:
        offsets.append(offsets[-1] + len(mb["domain"]))
    mine = slice(world.rank * n_local, (world.rank + 1) * n_local)
    last = len(micro_batches) - 1
    signal_fn = getattr(reduction, "sample_signal", None)
    signals = _SignalCollector(signal_fn) if signal_fn is not None else None
    if scope == "micro_batch" and signals is not None:  # its state (DoReMi's alpha) would update M times a step
        raise MixweightError(
            "train: weighting_scope micro_batch is for loss-based sample weights; a reduction "
            "with a sample signal (DoReMi) weights the whole step: use weighting_scope step"
        )

    def forward(mb: dict, record: bool = True) -> torch.Tensor:
        return _forward_losses(model, mb, autocast, signals if record else None, loss_impl)

    def weigh(losses: torch.Tensor, group_domains: torch.Tensor = domains) -> torch.Tensor:
        signal = signals.gathered(world) if signals is not None else None
        return reduction.weights(losses, group_domains, step, signal=signal)

    if reduction.needs_whole_step and len(micro_batches) > 1 and scope == "micro_batch":
        # each micro-batch on all processes is a weighting group; the step averages the M groups
        local_losses, local_weights = [], []
        for i, mb in enumerate(micro_batches):
            with _sync_context(model, i == last):
                mb_losses = forward(mb)
                group_losses = all_gather_cat(mb_losses.detach().float(), world)
                group_weights = weigh(group_losses, all_gather_cat(mb["domain"], world))
                n_mb = len(mb_losses)
                my_weights = group_weights[world.rank * n_mb : (world.rank + 1) * n_mb] / len(micro_batches)
                _weighted_backward(mb_losses, my_weights, world)
            local_losses.append(mb_losses.detach().float())
            local_weights.append(my_weights.detach().float())
        losses = all_gather_cat(torch.cat(local_losses), world)  # the step's order: process-major
        weights = all_gather_cat(torch.cat(local_weights), world)
    elif reduction.needs_whole_step and len(micro_batches) > 1:
        with torch.no_grad():
            local_losses = torch.cat([forward(mb) for mb in micro_batches])
        losses = all_gather_cat(local_losses.float(), world)
        weights = weigh(losses)
        for i, mb in enumerate(micro_batches):
            with _sync_context(model, i == last):
                _weighted_backward(forward(mb, record=False), weights[mine][offsets[i] : offsets[i + 1]], world)
    elif reduction.needs_whole_step:
        with _sync_context(model, True):
            mb_losses = forward(micro_batches[0])
            losses = all_gather_cat(mb_losses.detach().float(), world)
            weights = weigh(losses)
            _weighted_backward(mb_losses, weights[mine], world)
    else:
        n_global = n_local * world.size
        collected = []
        for i, mb in enumerate(micro_batches):
            with _sync_context(model, i == last):
                mb_losses = forward(mb)
                _weighted_backward(mb_losses, torch.full_like(mb_losses, 1.0 / n_global), world)
            collected.append(mb_losses.detach().float())
        losses = all_gather_cat(torch.cat(collected), world)
        weights = weigh(losses)
        n_finite = int(torch.isfinite(losses).sum())
        if 0 < n_finite < n_global:  # linearity: rescale the 1/N gradient to 1/N_finite
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.mul_(n_global / n_finite)

    finite = torch.isfinite(losses)
    objective = (weights * torch.where(finite, losses, torch.zeros_like(losses))).sum().item()
    return StepResult(losses.cpu(), domains.cpu(), weights.detach().cpu(), objective, int(finite.sum()))
