"""DoGE (Fan, Pagliardini, Jaggi, 2023): domain weights from gradient alignment (docs/algorithms.md section 3).

A proxy is trained on batches that sample every domain uniformly. At each optimizer step `DoGEObjective`
computes each domain's gradient and `doge_step` (mixweight.domain.doge_update: the clipping, the scores, the
update alpha' and the applied gradient sum_i alpha'_i g_i) decides the step; the output is the average of
alpha' over the steps. `replay` recomputes every alpha' from what the artifact records (the initial weights,
each step's scores, lr and present domains).

Targets:
- "mix" (default, the published universal configuration `config/doge.json`): a held-out
  mixture of the training domains. The reference carves it from each domain's training data as
  an extra domain sampled like the others (1 of k + 1 sources) and never trained on; here a
  fixed 1 / (k + 1) of every domain's blocks, chosen by a hash of the block's tokens
  (`heldout_mix_mask`), forms it: the same blocks at every step and on every rank, never
  trained on. Its gradient includes domain i's own data, so the self term stays. A domain
  with few distinct blocks can be missing from the mixture (the synthetic corpus's
  `redundant`, 8 distinct blocks, has none in it); a step without a mixture block makes no update.
- "all": the paper's universal form without held-out data, s_i = <g_i, sum_{j != i} g_j>.
- a list of domain names (out-of-domain): held-out domains, sampled but never trained on.

The running average counts every optimizer step (alpha after the step's update).

Cost. Time (impl "ghost", the default; mixweight.domain.ghost): one forward and one backward per
micro-batch, with each layer's weight gradient formed per domain from the layer's inputs and
output gradients (the FLOPs of one weight gradient in all), one [R, R] product of the rows for
the scores and one pass for the applied gradient (benchmarks/proxy_cost.py). Impl "loop": each
present domain gets its own forward and backward over its slice of the step (same FLOPs, k
smaller calls). Memory: the k per-domain gradients are held flattened in float32, one row per
present training (and target) domain: k * P * 4 bytes (kept between steps), plus one more
P-sized buffer for the applied gradient. For gpt2-mini (124.4M parameters with GPT-2's 50257-token vocabulary,
tied embeddings) that is 7 * 498 MB = 3.5 GB for 7 domains, plus 0.5 GB: about 4 GB on top
of the model and optimizer state (1.5 GB for fp32 weights + AdamW), so about 5.5 GB in all.
On several ranks the rows are all-reduced in one collective of k * P floats per step.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import numpy as np
import torch

from mixweight.core.artifact import replay_arrays, replay_steps_array
from mixweight.core.distributed import World, all_gather_cat, all_reduce_sum
from mixweight.core.flops import inner_products_flops, row_mix_flops
from mixweight.core.loss import per_sample_loss
from mixweight.core.tracker_names import register_record_names
from mixweight.domain.doge_update import DoGEStep, doge_step, doge_update
from mixweight.domain.ghost import DomainRows, Recompute
from mixweight.errors import MixweightError
from mixweight.train.parallel import grad_sync, unwrap
from mixweight.train.step import StepResult, to_device

IMPLS = ("ghost", "loop")  # how the per-domain gradients are computed; equal to float rounding
MIX, ALL = "mix", "all"  # the universal targets; anything else names held-out domains
# The published configurations (config/doge.json, config/doge_ood/*.json): mu and max_grad_norm.
PUBLISHED = {"universal": {"mu": 0.01, "max_grad_norm": 5.0}, "out-of-domain": {"mu": 0.05, "max_grad_norm": 1.0}}
HASH_PRIME, HASH_BASE = 2_147_483_647, 257  # the held-out mixture's block hash (a polynomial hash mod 2^31 - 1)


def replay(artifact) -> np.ndarray:
    """The per-step weights [T + 1, k] recomputed from a DoGE artifact's `replay` block alone.

    `artifact`: a DomainWeights (or its dict). Row 0 is `initial_weights`; row t applies
    `doge_update` with step t's recorded scores, lr and present domains, and the method's mu.
    A step that made no update is recorded with no domain present.
    """
    block, where = replay_arrays(artifact, "doge", params=("mu",))
    lrs = replay_steps_array(block, "lr", where)
    steps, mu = block["steps"], float(block["mu"])
    if mu <= 0:
        raise MixweightError(f"{where}: 'replay.mu' must be > 0, got {mu}")
    alpha = torch.tensor(block["initial_weights"], dtype=torch.float64)
    signals = torch.tensor(block["signals"], dtype=torch.float64).reshape(steps, len(alpha))
    present = torch.tensor(block["present"], dtype=torch.bool).reshape(steps, len(alpha))
    rows = [alpha]
    for t in range(steps):
        alpha = doge_update(alpha, signals[t], lrs[t], mu, present[t])
        rows.append(alpha)
    return torch.stack(rows).numpy()


@functools.lru_cache(maxsize=8)
def _hash_powers(length: int) -> torch.Tensor:
    return torch.tensor([pow(HASH_BASE, j, HASH_PRIME) for j in range(length)], dtype=torch.long)


def heldout_mix_mask(input_ids: torch.Tensor, parts: int) -> torch.Tensor:
    """True for the blocks [B, L] that belong to the held-out mixture: about 1 in `parts`.

    A polynomial hash of the block's tokens modulo 2^31 - 1 (exact in int64: every product is
    below 2^62), so membership depends on the block alone: not on the step, the rank, the
    micro-batch or the order, and a block of the mixture is never trained on.
    """
    ids = input_ids.long() % HASH_PRIME
    powers = _hash_powers(ids.shape[1]).to(ids.device)
    h = ((ids * powers) % HASH_PRIME).sum(dim=1) % HASH_PRIME
    return h % parts == 0


def resolve_target(target, domains: list[str]) -> str | list[str]:
    """ "mix" | "all" | [held-out domain names], from a `--target` value (None: "mix").

    "mix" or "all" name the corpus domain of that name when there is one (held out like any
    target, as the reference's own "mix" domain is); otherwise the universal targets above.
    """
    if target is None:
        target = MIX
    if isinstance(target, str):
        if target in (MIX, ALL) and target not in domains:
            return target
        target = [t.strip() for t in target.split(",")]
    return list(target)


def published_defaults(target) -> dict:
    """mu and max_grad_norm of the published configuration for this kind of target."""
    return PUBLISHED["universal" if target in (MIX, ALL) else "out-of-domain"]


def _tracker_names(record: dict) -> dict:
    """The proxy's own metrics under the README's tracker names (its weights as domain_weights/D, like DoReMi's)."""
    names = {f"domain_weights/{d}": a for d, a in record.get("alpha", {}).items()}
    names.update({f"doge/{d}/score": s for d, s in (record.get("scores") or {}).items()})
    names["doge/updated"] = record.get("updated")
    return names


register_record_names("doge", _tracker_names)


class DoGEObjective:
    """The DoGE proxy step as a `StepObjective` for `mixweight.train.loop.train`.

    domains: the corpus's domain names (manifest order; a micro-batch's `domain` ids index it).
    target: "mix", "all" or held-out domain names (see `resolve_target`). Held-out domains and
        the held-out mixture's blocks are sampled but never trained on.
    max_grad_norm: each per-domain gradient (targets included) is clipped to this norm before
        the scores and the applied gradient (0: no clipping).
    impl: "ghost" (default): every per-domain gradient from one forward and one backward
        (mixweight.domain.ghost); "loop": one forward and backward per domain. Equal to float rounding.

    The arguments are assumed valid: they are checked once, where they enter from a user, by
    `DoGEConfig.validate` (mu > 0, max_grad_norm >= 0, score in SCORES, impl in IMPLS, the target's form) and
    `doge_run.check_targets` (held-out targets are corpus domains and leave one to train on). A library user
    building this objective directly builds a DoGEConfig first, or passes values that satisfy those rules.
    """

    def __init__(
        self,
        domains: list[str],
        target="mix",
        mu: float = 0.01,
        score: str = "reference",
        max_grad_norm: float = 0.0,
        log_every: int = 1,
        total_steps: int | None = None,
        impl: str = "ghost",
    ):
        self.target = resolve_target(target, domains)
        targets = [] if isinstance(self.target, str) else self.target
        self.impl = impl
        self._rows: DomainRows | None = None
        self._buffer: torch.Tensor | None = None
        self.domains = list(domains)
        self.target_ids = [domains.index(t) for t in targets]
        self.train_ids = [i for i in range(len(domains)) if i not in self.target_ids]
        self.train_domains = [domains[i] for i in self.train_ids]
        self.heldout_mix = self.target == MIX  # the target is the held-out mixture of the training domains
        self.mu, self.score, self.max_grad_norm = mu, score, max_grad_norm
        self.log_every, self.total_steps = log_every, total_steps
        k = len(self.train_ids)
        self.initial = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.alpha = self.initial.clone()
        self.alpha_sum = torch.zeros(k, dtype=torch.float64)
        self.updates = 0
        self.trajectory: list[dict] = []
        # Every step's inputs to the update, for `replay`: scores (0.0 where unused), present, lr.
        self.signals: list[list[float]] = []
        self.present: list[list[bool]] = []
        self.lrs: list[float] = []
        self._last: dict = {}

    # --- results ---------------------------------------------------------------------
    def average_weights(self) -> list[float]:
        """The average of alpha over the steps taken (uniform before any step)."""
        if self.updates == 0:
            return self.alpha.tolist()
        avg = self.alpha_sum / self.updates
        return (avg / avg.sum()).tolist()

    def last_weights(self) -> list[float]:
        return self.alpha.tolist()

    def replay_block(self) -> dict:
        """The artifact's `replay` block: what `replay` needs to recompute every step's alpha."""
        return {
            "domains": self.train_domains,
            "steps": len(self.lrs),
            "initial_weights": self.initial.tolist(),
            "signals": self.signals,
            "present": self.present,
            "lr": self.lrs,
            "mu": self.mu,
            "score": self.score,
            "average_start": 1,
        }

    # --- the step --------------------------------------------------------------------
    def _groups(self, micro_batch: dict) -> torch.Tensor:
        """Each sample's gradient row: its domain id, or len(domains) for a block of the held-out mixture."""
        groups = micro_batch["domain"].clone()
        if self.heldout_mix:
            held_out = heldout_mix_mask(micro_batch["input_ids"], len(self.train_ids) + 1)
            groups[held_out] = len(self.domains)
        return groups

    def _row_buffer(self, most: int, rows: int, size: int, device, dtype) -> torch.Tensor:
        """[rows, size] gradient rows (float32 at least; float64 for a float64 model), kept between steps;
        zeroed for impl loop, left as they are for ghost (DomainRows overwrites, then zeroes what it did not).

        Allocated once for the most rows a step can have: a fresh allocation of k x P floats every step
        costs page faults (about 3x the time of zeroing memory already held).
        """
        buffer = self._buffer
        if buffer is None or buffer.numel() < most * size or buffer.device != device or buffer.dtype != dtype:
            self._buffer = buffer = torch.empty(most * size, device=device, dtype=dtype)
        rows = buffer[: rows * size].view(rows, size)
        return rows if self.impl == "ghost" else rows.zero_()

    def _domain_rows(self, module, params, micro_batches, groups, rows, grads, finite, mb_losses, autocast) -> None:
        """Add each row's summed gradient over its local finite-loss samples into `grads` [R, P] and the
        counts into `finite`; each micro-batch's per-sample losses into `mb_losses`.

        "ghost": one forward and one backward per micro-batch (mixweight.domain.ghost);
        "loop": one forward and backward per row and micro-batch (the reference implementation).
        """
        if self.impl == "ghost":
            if self._rows is None or self._rows.module is not module:
                self._rows = DomainRows(module, params)
            self._rows.begin(grads)
            for i, (mb, group) in enumerate(zip(micro_batches, groups)):
                losses = self._rows.accumulate(mb, group, rows, grads, finite, per_sample_loss, autocast, verify=i == 0)
                mb_losses[i][:] = losses.float()
            self._rows.finish()
            return
        for row, d in enumerate(rows):
            for mb, group, measured in zip(micro_batches, groups, mb_losses):
                mask = group == d
                if mask.any():  # the same loss function as ghost's (per_sample_loss on the logits)
                    with autocast or nullcontext():
                        logits = module(input_ids=mb["input_ids"][mask]).logits
                    losses = per_sample_loss(logits, mb["input_ids"][mask])
                    ok = torch.isfinite(losses.detach())
                    measured[mask] = losses.detach().float()
                    finite[row] += ok.sum()
                    if ok.any():
                        parts = torch.autograd.grad(torch.where(ok, losses, 0.0).sum(), params, allow_unused=True)
                        grads[row] += torch.cat(
                            [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(parts, params)]
                        ).to(grads.dtype)

    def compute_gradients(self, model, micro_batches, step, world: World, autocast, lr) -> StepResult:
        """Per-domain gradients -> the update (`doge_step`, pure) -> the mixed gradient in `.grad`."""
        module = unwrap(model)  # never through DDP: the rows are all-reduced here
        params = [p for p in module.parameters() if p.requires_grad]
        micro_batches = to_device(micro_batches, params[0].device)
        groups = [self._groups(mb) for mb in micro_batches]
        rows, grads, finite, local_losses = self._domain_gradients(
            model, module, params, micro_batches, groups, world, autocast
        )
        slots = [self.train_ids.index(d) if d in self.train_ids else None for d in rows]
        inner = (grads @ grads.t()).double()  # every score needs only the rows' inner products: one pass
        universal = self.target == ALL
        update = doge_step(inner, finite, slots, self.alpha, lr, self.mu, self.score, self.max_grad_norm, universal)
        self.alpha = update.alpha
        applied = update.row_weights.to(grads.dtype) @ grads  # sum_i alpha_i * clipped g_i: one pass
        for param, piece in zip(params, applied.split([p.numel() for p in params])):
            param.grad = piece.view_as(param).to(param.dtype, copy=True)
        self._record(step, lr, update)
        return self._result(micro_batches, groups, local_losses, rows, slots, finite, update, world)

    def extra_flops(self, model, shape, tokens: int, micro_batches: int) -> dict[str, float]:
        """Per step, beyond one forward and backward (the per-domain rows cost one weight gradient in all): the
        inner products of at most R rows of P gradient entries, and their mixture (section 3.7)."""
        rows = len(self.train_ids) + (1 if self.heldout_mix else len(self.target_ids))
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"domain_gradients": inner_products_flops(rows, size) + row_mix_flops(rows, size)}

    def _domain_gradients(self, model, module, params, micro_batches, groups, world: World, autocast):
        """The rows present in the step (same on every rank), their global gradient sums [R, P] over finite
        samples, their finite counts [R], and this process's per-sample losses (the step's local order)."""
        mb_losses = [torch.full((len(g),), float("nan"), device=g.device, dtype=torch.float32) for g in groups]
        mix_group = len(self.domains)
        counts = all_reduce_sum(torch.bincount(torch.cat(groups), minlength=mix_group + 1), world)
        target_groups = [mix_group] if self.heldout_mix else self.target_ids
        rows = [d for d in self.train_ids + target_groups if counts[d] > 0]
        most, size = len(target_groups) + len(self.train_ids), sum(p.numel() for p in params)
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        with grad_sync(model, False):  # belt and braces: the forwards below bypass DDP anyway
            while True:
                grads = self._row_buffer(most, len(rows), size, params[0].device, dtype)
                finite = torch.zeros(len(rows), device=params[0].device)
                try:
                    self._domain_rows(module, params, micro_batches, groups, rows, grads, finite, mb_losses, autocast)
                    break
                except Recompute:  # the first step's check moved parameters to the per-domain path
                    continue
        all_reduce_sum(grads, world)
        all_reduce_sum(finite, world)
        return rows, grads, finite, torch.cat(mb_losses)

    def _record(self, step: int, lr: float, update: "DoGEStep") -> None:
        """The running average, the replay record, the step's metrics and the trajectory."""
        self.alpha_sum += self.alpha
        self.updates += 1
        used = update.present if update.updated else torch.zeros_like(update.present)  # no update: none present
        self.signals.append([float(s) if u else 0.0 for s, u in zip(update.scores.tolist(), used.tolist())])
        self.present.append(used.tolist())
        self.lrs.append(float(lr))
        scores = {d: (update.scores[i].item() if used[i] else None) for i, d in enumerate(self.train_domains)}
        alpha_by_name = dict(zip(self.train_domains, self.alpha.tolist()))
        self._last = {"doge": {"alpha": alpha_by_name, "scores": scores, "updated": update.updated}}
        done = step + 1
        if done % self.log_every == 0 or done == self.total_steps:
            self.trajectory.append(
                {"step": done, "weights": {d: alpha_by_name.get(d, 0.0) for d in self.domains}, "signal": scores}
            )

    def _result(self, micro_batches, groups, local_losses, rows, slots, finite, update, world) -> StepResult:
        """The step's record: a training domain's finite sample weighs mix_i / (its finite count), targets 0."""
        losses = all_gather_cat(local_losses, world).cpu()
        domains = all_gather_cat(torch.cat([mb["domain"] for mb in micro_batches]), world).cpu()
        sample_groups = all_gather_cat(torch.cat(groups), world).cpu()
        n_finite = finite.cpu()
        weights = torch.zeros(len(losses))
        ok = torch.isfinite(losses)
        for r, (d, slot) in enumerate(zip(rows, slots)):
            if slot is not None and update.present[slot]:
                weights[(sample_groups == d) & ok] = float(update.mix[slot] / n_finite[r])
        return StepResult.of(losses, domains, weights)

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "alpha": self.alpha.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "updates": self.updates,
            "trajectory": self.trajectory,
            "train_domains": self.train_domains,
            "signals": self.signals,
            "present": self.present,
            "lrs": self.lrs,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("train_domains") != self.train_domains:
            raise MixweightError(
                f"doge: the checkpoint's training domains {state.get('train_domains')} differ "
                f"from this run's {self.train_domains}; use a new work directory"
            )
        self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
        self.alpha_sum = torch.tensor(state["alpha_sum"], dtype=torch.float64)
        self.updates = int(state["updates"])
        self.trajectory = [dict(entry) for entry in state["trajectory"]]
        if "lrs" not in state:
            raise MixweightError("doge: this checkpoint predates per-step replay records; use a new work directory")
        self.signals = [list(s) for s in state["signals"]]
        self.present = [list(p) for p in state["present"]]
        self.lrs = [float(v) for v in state["lrs"]]

    def step_metrics(self) -> dict:
        return self._last
