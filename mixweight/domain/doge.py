"""DoGE (Fan, Pagliardini, Jaggi, 2023): domain weights from gradient alignment (ALGORITHMS.md section 3).

A proxy is trained on batches that sample every domain uniformly. At each optimizer step:

    g_i    = gradient of the mean loss of domain i's samples in the step (all micro-batches, all ranks)
    s_i    = <g_i, g_target>          (doge_scores)
    alpha' = alpha * exp(lr * s / mu), normalized        (doge_update)
    grad   = sum_i alpha'_i g_i       (then the loop clips and steps the optimizer)

and the output is the average of alpha' over the steps.

Pure pieces (`doge_scores`, `doge_update`) act on tensors; `DoGEObjective` is the training
loop's `StepObjective` that makes the per-domain gradients.

Choices where the paper leaves room (all documented at the function that makes them):
- Domains absent from a step (no finite sample of theirs on any rank) have no gradient: they
  get no score, keep their alpha, and contribute nothing; the present domains share the
  mass they held before (sum over present alpha is preserved), and the applied gradient is
  sum over present of alpha'_i g_i / sum over present alpha'_i, so its scale is that of a mean loss.
- OOD target domains are sampled but never trained on. A step without any target sample
  makes no update (alpha kept) but still trains with the current alpha.
- The running average counts every optimizer step (alpha after the step's update).

Cost. Time: each present domain gets its own forward and backward over its slice of the
step (same FLOPs as a plain step, but k smaller calls; see benchmarks/proxy_cost.py).
Memory: the k per-domain gradients are held flattened in float32, one row per present
training (and target) domain: k * P * 4 bytes, plus one more P-sized buffer for the
applied gradient. For gpt2-mini (124.4M parameters with GPT-2's 50257-token vocabulary,
tied embeddings) that is 7 * 498 MB = 3.5 GB for 7 domains, plus 0.5 GB: about 4 GB on top
of the model and optimizer state (1.5 GB for fp32 weights + AdamW), so about 5.5 GB in all.
On several ranks the rows are all-reduced in one collective of k * P floats per step.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mixweight.errors import MixweightError
from mixweight.train.distributed import World, all_gather_cat, all_reduce_sum
from mixweight.train.loss import per_sample_loss
from mixweight.train.step import StepResult

SCORES = ("paper", "normalized-clipped")
NORM_EPS = 1e-6  # added to the mean gradient norm, as the reference code does
CLIP_MAX = 5.0  # the reference clips lr * s / norm to [0, 5 lr]


def doge_scores(domain_grads: torch.Tensor, target="all", score: str = "paper", lr: float | None = None,
                target_grads: torch.Tensor | None = None) -> torch.Tensor:
    """Alignment score of each training domain's gradient with the target gradient: [k].

    domain_grads: [k, P], one flattened gradient per training domain.
    target: "all" (universal generalization): s_i = <g_i, sum_{j != i} g_j>, the self term
        <g_i, g_i> excluded; or a non-empty list of row indices into `target_grads` ([m, P],
        the held-out target domains' gradients): s_i = <g_i, g_target> with g_target the
        mean of those rows (out-of-domain).
    score: "paper" (the raw inner product) or "normalized-clipped" (the reference code):
        s_i / (mean_j ||g_j||_2 + 1e-6), the mean taken over the k training domains' L2 norms,
        then clipped to [0, 5]. The reference clips the update exponent lr * s / norm to
        [0, 5 lr]; as `doge_update` multiplies the score by lr (>= 0), clipping the score to
        [0, 5] is the same thing. `lr` is therefore accepted but not needed: it is only
        checked to be >= 0.
    """
    if score not in SCORES:
        raise MixweightError(f"doge: score must be one of {', '.join(SCORES)}, got {score!r}")
    if lr is not None and lr < 0:
        raise MixweightError(f"doge: lr must be >= 0, got {lr}")
    grads = domain_grads.double()
    if isinstance(target, str):
        if target != "all":
            raise MixweightError(f"doge: target must be 'all' or a list of target indices, got {target!r}")
        total = grads.sum(dim=0)
        raw = grads @ total - (grads * grads).sum(dim=1)
    else:
        if target_grads is None or len(target) == 0:
            raise MixweightError("doge: an out-of-domain target needs target_grads and at least one target index")
        raw = grads @ target_grads.double()[list(target)].mean(dim=0)
    if score == "paper":
        return raw
    mean_norm = grads.norm(dim=1).mean()
    return (raw / (mean_norm + NORM_EPS)).clamp(0.0, CLIP_MAX)


def doge_update(alpha: torch.Tensor, scores: torch.Tensor, lr: float, mu: float,
                present: torch.Tensor | None = None) -> torch.Tensor:
    """alpha_next proportional to alpha * exp(lr * s / mu), in log space (logsumexp), float64.

    `present` (bool [k], default all): only these domains are updated; the others keep their
    alpha exactly and the present ones share the mass they held before (their sum is
    preserved), so alpha_next still sums to 1. Scores of absent domains are ignored.
    """
    if mu <= 0:
        raise MixweightError(f"doge: mu must be > 0, got {mu}")
    alpha = alpha.double()
    present = torch.ones_like(alpha, dtype=torch.bool) if present is None else present.bool()
    if not present.any():
        return alpha.clone()
    logits = alpha[present].log() + lr * scores.double()[present] / mu
    mass = alpha[present].sum()
    out = alpha.clone()
    out[present] = mass * torch.softmax(logits, dim=0)
    return out


class DoGEObjective:
    """The DoGE proxy step as a `StepObjective` for `mixweight.train.loop.train`.

    domains: the corpus's domain names (manifest order; a micro-batch's `domain` ids index it).
    targets: names of held-out target domains (out-of-domain mode), or None/[] for the
        universal target ("all" training domains). Target domains are sampled but never trained on.
    """

    def __init__(self, domains: list[str], targets: list[str] | None = None, mu: float = 0.01,
                 score: str = "paper", log_every: int = 1, total_steps: int | None = None):
        if score not in SCORES:
            raise MixweightError(f"doge: score must be one of {', '.join(SCORES)}, got {score!r}")
        if mu <= 0:
            raise MixweightError(f"doge: mu must be > 0, got {mu}")
        targets = list(targets or [])
        unknown = [t for t in targets if t not in domains]
        if unknown:
            raise MixweightError(f"doge: target domain(s) {unknown} not in the corpus's domains {domains}")
        self.domains = list(domains)
        self.target_ids = [domains.index(t) for t in targets]
        self.train_ids = [i for i in range(len(domains)) if i not in self.target_ids]
        if not self.train_ids:
            raise MixweightError(f"doge: every domain is a target ({targets}); leave at least one domain to train on")
        self.train_domains = [domains[i] for i in self.train_ids]
        self.mu, self.score, self.log_every, self.total_steps = mu, score, log_every, total_steps
        k = len(self.train_ids)
        self.alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.alpha_sum = torch.zeros(k, dtype=torch.float64)
        self.updates = 0
        self.trajectory: list[dict] = []
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

    # --- the step --------------------------------------------------------------------
    def compute_gradients(self, model, micro_batches, step, world: World, autocast, lr) -> StepResult:
        module = getattr(model, "module", model)  # never through DDP: we reduce gradients ourselves
        params = [p for p in module.parameters() if p.requires_grad]
        device = params[0].device
        micro_batches = [{k: v.to(device) for k, v in mb.items()} for mb in micro_batches]
        local_domains = torch.cat([mb["domain"] for mb in micro_batches])
        local_losses = torch.full((len(local_domains),), float("nan"), device=device)
        n_domains = len(self.domains)
        counts = all_reduce_sum(torch.bincount(local_domains, minlength=n_domains).to(device), world)
        rows = [d for d in self.train_ids + self.target_ids if counts[d] > 0]  # same on every rank
        sizes = [p.numel() for p in params]
        grads = torch.zeros(len(rows), sum(sizes), device=device)
        finite = torch.zeros(len(rows), device=device)

        sync = getattr(model, "no_sync", None)  # belt and braces: the forward below bypasses DDP anyway
        with sync() if sync is not None else nullcontext():
            for row, d in enumerate(rows):
                offset = 0
                for mb in micro_batches:
                    mask = mb["domain"] == d
                    if mask.any():
                        with autocast or nullcontext():
                            logits = module(input_ids=mb["input_ids"][mask]).logits
                        losses = per_sample_loss(logits, mb["input_ids"][mask])
                        ok = torch.isfinite(losses.detach())
                        positions = torch.nonzero(mask).squeeze(1) + offset
                        local_losses[positions] = losses.detach().float()
                        finite[row] += ok.sum()
                        if ok.any():
                            parts = torch.autograd.grad(torch.where(ok, losses, 0.0).sum(), params, allow_unused=True)
                            grads[row] += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                                     for g, p in zip(parts, params)])
                    offset += len(mb["domain"])
        all_reduce_sum(grads, world)
        all_reduce_sum(finite, world)
        kept = [r for r in range(len(rows)) if finite[r] > 0]  # a domain whose losses are all non-finite is absent
        grads = grads / finite.clamp(min=1).unsqueeze(1)

        train_rows = [r for r in kept if rows[r] in self.train_ids]
        target_rows = [r for r in kept if rows[r] in self.target_ids]
        present = torch.zeros(len(self.train_ids), dtype=torch.bool)
        slot = {d: i for i, d in enumerate(self.train_ids)}
        present[[slot[rows[r]] for r in train_rows]] = True
        scores = torch.zeros(len(self.train_ids), dtype=torch.float64)
        updated = bool(train_rows) and (not self.target_ids or bool(target_rows))
        if updated:
            target = "all" if not self.target_ids else list(range(len(target_rows)))
            scores[present] = doge_scores(grads[train_rows], target, self.score, lr,
                                          target_grads=grads[target_rows] if target_rows else None).cpu()
            self.alpha = doge_update(self.alpha, scores, lr, self.mu, present)
        mix = torch.zeros(len(self.train_ids), dtype=torch.float64)
        if present.any():
            mix[present] = self.alpha[present] / self.alpha[present].sum()
        applied = mix[present].to(device=device, dtype=grads.dtype) @ grads[train_rows] if train_rows else \
            torch.zeros(grads.shape[1], device=device)
        for param, piece in zip(params, applied.split(sizes)):
            param.grad = piece.view_as(param).clone()

        self.alpha_sum += self.alpha
        self.updates += 1
        signal = {self.train_domains[i]: (scores[i].item() if present[i] and updated else None)
                  for i in range(len(self.train_ids))}
        self._last = {"doge": {"alpha": dict(zip(self.train_domains, self.alpha.tolist())), "scores": signal,
                               "updated": updated}}
        done = step + 1
        if done % self.log_every == 0 or done == self.total_steps:
            self.trajectory.append({"step": done, "weights": dict(zip(self.train_domains, self.alpha.tolist())),
                                    "signal": signal})

        losses = all_gather_cat(local_losses, world).cpu()
        domains = all_gather_cat(local_domains, world).cpu()
        n_finite = finite.cpu()
        weights = torch.zeros(len(losses))
        ok = torch.isfinite(losses)
        for r in train_rows:
            d = rows[r]
            weights[(domains == d) & ok] = float(mix[slot[d]] / n_finite[r])
        objective = (weights * torch.where(ok, losses, torch.zeros_like(losses))).sum().item()
        return StepResult(losses, domains, weights, objective, int(ok.sum()))

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"alpha": self.alpha.tolist(), "alpha_sum": self.alpha_sum.tolist(), "updates": self.updates,
                "trajectory": self.trajectory, "train_domains": self.train_domains}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("train_domains") != self.train_domains:
            raise MixweightError(f"doge: the checkpoint's training domains {state.get('train_domains')} differ "
                                 f"from this run's {self.train_domains}; use a new work directory")
        self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
        self.alpha_sum = torch.tensor(state["alpha_sum"], dtype=torch.float64)
        self.updates = int(state["updates"])
        self.trajectory = [dict(entry) for entry in state["trajectory"]]

    def step_metrics(self) -> dict:
        return self._last
