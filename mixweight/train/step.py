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

DDP averages gradients over processes, so each process scales its part of the
objective by the world size to obtain the gradient of the global sum.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from mixweight.train.distributed import World, all_gather_cat
from mixweight.train.loss import per_sample_loss
from mixweight.weighting import uniform_weights


class SampleReduction(Protocol):
    """Maps the per-sample losses of a whole step (global order) to weights summing to 1.

    A reduction may also define ``sample_signal(input_ids, logits) -> Tensor[B, ...]``: a
    per-sample statistic computed without gradient from each micro-batch's detached
    logits (DoReMi's excess loss over a reference model, for example). The step gathers
    it across processes like the losses and passes it to ``weights`` as ``signal``.
    """

    needs_whole_step: bool  # True when a sample's weight depends on the other samples' losses

    def weights(self, losses: torch.Tensor, domains: torch.Tensor, step: int,
                signal: torch.Tensor | None = None) -> torch.Tensor: ...


class MeanReduction:
    """The plain mean loss over the samples whose loss is finite."""

    needs_whole_step = False

    def weights(self, losses: torch.Tensor, domains: torch.Tensor, step: int,
                signal: torch.Tensor | None = None) -> torch.Tensor:
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
    def add(self, input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        self.parts.append(self.fn(input_ids, logits.detach()).float())

    def gathered(self, world: World) -> torch.Tensor:
        return all_gather_cat(torch.cat(self.parts), world)


def _forward_losses(model, batch: dict, autocast, signals: _SignalCollector | None = None) -> torch.Tensor:
    """Per-sample losses of a micro-batch; records the reduction's sample signal when asked."""
    with autocast or nullcontext():
        logits = model(input_ids=batch["input_ids"]).logits
    if signals is not None:
        signals.add(batch["input_ids"], logits)
    return per_sample_loss(logits, batch["input_ids"])


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
    model, micro_batches: list[dict], reduction: SampleReduction, step: int, world: World, autocast=None
) -> StepResult:
    """Forward and backward every micro-batch of one step; gradients are left in `.grad`."""
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

    def weigh(losses: torch.Tensor) -> torch.Tensor:
        signal = signals.gathered(world) if signals is not None else None
        return reduction.weights(losses, domains, step, signal=signal)

    if reduction.needs_whole_step and len(micro_batches) > 1:
        with torch.no_grad():
            local_losses = torch.cat([_forward_losses(model, mb, autocast, signals) for mb in micro_batches])
        losses = all_gather_cat(local_losses.float(), world)
        weights = weigh(losses)
        for i, mb in enumerate(micro_batches):
            with _sync_context(model, i == last):
                _weighted_backward(_forward_losses(model, mb, autocast), weights[mine][offsets[i] : offsets[i + 1]], world)
    elif reduction.needs_whole_step:
        with _sync_context(model, True):
            mb_losses = _forward_losses(model, micro_batches[0], autocast, signals)
            losses = all_gather_cat(mb_losses.detach().float(), world)
            weights = weigh(losses)
            _weighted_backward(mb_losses, weights[mine], world)
    else:
        n_global = n_local * world.size
        collected = []
        for i, mb in enumerate(micro_batches):
            with _sync_context(model, i == last):
                mb_losses = _forward_losses(model, mb, autocast, signals)
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
