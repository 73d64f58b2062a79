"""DoReMi (Xie et al., 2023): the Group DRO domain-weight update and the proxy's step weighting.

docs/algorithms.md section 2. Per optimizer step t of the proxy:

    lambda_t[i] = token-average of max(l_proxy - l_ref, 0) over domain i's tokens in the
                  global batch (all ranks, all micro-batches); absent domains keep lambda_{t-1}[i]
    alpha_t     = (1 - c) * softmax(log alpha_{t-1} + eta * lambda_t) + c / k
    loss        = sum_i alpha_t[i] * (mean token loss of domain i in the batch)      ("paper")
               or sum_tok (alpha_t[d]/s[d]) * l_tok / sum_tok (alpha_t[d]/s[d])        ("token")

alpha_t is computed from detached statistics before the parameter step. The output is
the average of alpha_1..alpha_T (alpha_0, the uniform start, is not counted: the paper's
(1/T) sum_{t=1}^T alpha_t; the reference code also counts alpha_0, which only pulls the
average towards uniform by 1/(T+1)).

Everything is exact under gradient accumulation and torchrun: each sample's signal is
[sum of clipped excess over its counted tokens, number of counted tokens], which the step
gathers across micro-batches and ranks, so per-domain token averages are global.
All domain-weight arithmetic is float64, so the JSON state round-trips exactly.

A domain absent from the first steps starts at excess loss 0 (INITIAL_EXCESS), not at
log(vocab size) as the official DoReMi code initializes its per-domain scores. Chosen
deliberately: lambda is an estimate of how much the proxy lags the reference, and a domain
that has not been measured has no estimate. log(V) (10.8 nats for GPT-2's vocabulary) is
an optimistic "as bad as uniform guessing" prior that multiplies the unseen domain's weight
by V**eta per step (50257x at eta 1), so after one or two steps the weights are near one-hot
on a domain nobody has measured, and that spike stays in the average. 0 can only shrink an
unseen domain relative to the others by exp(-eta * their excess) per step (a few nats at
most, and never below the smoothing floor c/k), so its first real measurement corrects it.
In a batch that covers every domain (the recommended setting) the choice has no effect.

The proxy records every step's measured lambda and which domains were present (``replay``
in the artifact), so `replay` recomputes the whole trajectory from the artifact alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mixweight.core.chunked_loss import lm_token_losses
from mixweight.core.loss import per_token_losses  # noqa: F401 - the per-token loss DoReMi's excess is made of
from mixweight.core.tracker_names import register_record_names
from mixweight.errors import MixweightError
from mixweight.train.compute import reference_forward
from mixweight.train.step import StepWeighting
from mixweight.weighting.domain_update import doremi_update  # the update rule, shared with online mixing

PROXY_LOSSES = ("paper", "token")  # the loss the proxy minimises (docs/algorithms.md section 2.4)
MISSING_WARN_FRACTION = 0.1  # warn when a domain is absent from more than this share of steps
MISSING_WARN_MIN_STEPS = 20  # ... once at least this many steps were seen
INITIAL_EXCESS = 0.0  # lambda_0 of every domain (see the module docstring for why not log(vocab size))


def proxy_loss_weights(
    alpha: torch.Tensor,
    domains: torch.Tensor,
    counts: torch.Tensor,
    valid: torch.Tensor,
    proxy_loss: str,
    sampling_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample weights (sum 1 over valid samples) that turn sum_s w_s * l_s into the proxy's loss.

    l_s is sample s's mean token loss and n_s its counted tokens; C_i = sum of n_s over domain i.
    - paper: sum_i alpha'[i] * (token-mean loss of domain i) -> w_s = alpha'[d_s] * n_s / C_{d_s}, where
      alpha' is alpha renormalized over the domains present in the batch (an absent domain has no
      loss term; renormalizing keeps the weights summing to 1). Equal lengths: alpha'[d] / n_d(batch).
    - token: the reference code's token-weighted mean with per-token weight v_d = alpha[d] / s[d]
      (s: sampling proportions, uniform for the proxy) -> w_s = v_{d_s} n_s / sum_s' v_{d_s'} n_s'.
    """
    k = alpha.numel()
    counts = torch.where(valid, counts, torch.zeros_like(counts))
    per_domain = torch.zeros(k, dtype=torch.float64).index_add_(0, domains, counts)
    if proxy_loss == "paper":
        present = per_domain > 0
        renormalized = torch.where(present, alpha, torch.zeros_like(alpha))
        renormalized = renormalized / renormalized.sum()
        weights = renormalized[domains] * counts / per_domain[domains].clamp(min=1e-300)
    else:  # "token" (checked where it enters: DoReMiWeighting, the runner's config)
        scale = alpha if sampling_weights is None else alpha / sampling_weights
        per_sample = scale[domains] * counts
        weights = per_sample / per_sample.sum().clamp(min=1e-300)
    return torch.where(valid, weights, torch.zeros_like(weights))


# The tracker names of the proxy's own metrics (README, "Experiment trackers").
register_record_names("domain_weights", lambda alpha: {f"domain_weights/{d}": w for d, w in alpha.items()})
register_record_names("excess_loss", lambda excess: {f"doremi/{d}/excess_loss": x for d, x in excess.items()})


class DoReMiWeighting(StepWeighting):
    """The DoReMi proxy's StepWeighting: excess-loss signal, alpha update, domain-weighted loss.

    Implements every hook of `mixweight.train.step.StepWeighting`: `sample_signal` (the excess
    loss, docs/algorithms.md section 2.2), `weights` (the update, section 2.3, and the proxy's
    loss, section 2.4), `state_dict`/`load_state_dict` and `step_metrics`.
    """

    def __init__(
        self,
        reference: torch.nn.Module,
        domains: list[str],
        eta: float = 1.0,
        smoothing: float = 1e-3,
        proxy_loss: str = "paper",
        log_every: int = 10,
        total_steps: int | None = None,
        loss_impl: str = "auto",
    ):
        if proxy_loss not in PROXY_LOSSES:
            raise MixweightError(f"doremi: proxy_loss must be one of {', '.join(PROXY_LOSSES)}, got {proxy_loss!r}")
        self.reference = reference.eval().requires_grad_(False) if reference is not None else None
        self.domains = list(domains)
        self.eta, self.smoothing, self.proxy_loss = float(eta), float(smoothing), proxy_loss
        self.loss_impl = loss_impl  # how the reference's per-token losses are computed (see chunked_loss)
        self.log_every, self.total_steps = int(log_every), total_steps
        k = len(self.domains)
        self.alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.initial_weights = self.alpha.tolist()
        self.excess = torch.full((k,), INITIAL_EXCESS, dtype=torch.float64)
        self.alpha_sum = torch.zeros(k, dtype=torch.float64)
        self.updates = 0  # number of alpha_t summed into alpha_sum
        self.missing = [0] * k  # steps in which each domain was absent from the global batch
        self.warned_missing = False
        self.trajectory: list[dict] = []
        # every step's measured lambda (0.0 where absent) and presence: the artifact's replay block
        self.step_signals: list[list[float]] = []
        self.step_present: list[list[bool]] = []

    # --- the step hooks --------------------------------------------------------------
    @torch.no_grad()
    def sample_signal(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 2]: per sample, the sum of max(l_proxy - l_ref, 0) over counted tokens, and their count.

        `token_losses` [B, L-1] are the proxy's per-token losses (fp32, 0 where ignored) and `mask` the
        counted tokens, as the step computed them (full logits or chunked: `loss_impl`). The reference's
        come from the same function, under the step's autocast context (the step calls this inside it).
        """
        if self.reference is None:
            raise MixweightError("doremi: this weighting has no reference model (it was built for state only)")
        if next(self.reference.parameters()).device != input_ids.device:
            self.reference.to(input_ids.device)
        ref_loss, _ = lm_token_losses(self.reference, input_ids, self.loss_impl)
        excess = torch.clamp(token_losses.float() - ref_loss, min=0.0) * mask
        return torch.stack([excess.sum(dim=1), mask.sum(dim=1).float()], dim=1)

    def weights(
        self, losses: torch.Tensor, domains: torch.Tensor, step: int, signal: torch.Tensor | None = None
    ) -> torch.Tensor:
        if signal is None:
            raise MixweightError("doremi: the step passed no sample signal; DoReMiWeighting needs sample_signal")
        signal = signal.detach().to("cpu", torch.float64)
        domains = domains.detach().cpu().long()
        excess_sum, counts = signal[:, 0], signal[:, 1]
        valid = torch.isfinite(losses.detach().cpu()) & torch.isfinite(excess_sum) & (counts > 0)
        k = len(self.domains)
        zero = torch.zeros_like(excess_sum)
        domain_excess = torch.zeros(k, dtype=torch.float64).index_add_(0, domains, torch.where(valid, excess_sum, zero))
        domain_tokens = torch.zeros(k, dtype=torch.float64).index_add_(0, domains, torch.where(valid, counts, zero))
        present = domain_tokens > 0
        measured = torch.where(present, domain_excess / domain_tokens.clamp(min=1.0), torch.zeros_like(self.excess))
        self.step_signals.append(measured.tolist())
        self.step_present.append(present.tolist())
        self.excess = torch.where(present, measured, self.excess)
        self._count_missing(present)
        self.alpha = doremi_update(self.alpha, self.excess, self.eta, self.smoothing)
        self.alpha_sum += self.alpha
        self.updates += 1
        done = step + 1
        if done % self.log_every == 0 or done == self.total_steps:
            self.trajectory.append({"step": done, "weights": self.alpha.tolist(), "signal": self.excess.tolist()})
        if not valid.any():
            return torch.zeros(len(losses), dtype=torch.float32, device=losses.device)
        weights = proxy_loss_weights(self.alpha, domains, counts, valid, self.proxy_loss)
        return weights.to(device=losses.device, dtype=torch.float32)

    def _count_missing(self, present: torch.Tensor) -> None:
        for i, here in enumerate(present.tolist()):
            self.missing[i] += 0 if here else 1
        steps = self.updates + 1
        if self.warned_missing or steps < MISSING_WARN_MIN_STEPS:
            return
        often = [d for d, m in zip(self.domains, self.missing) if m > MISSING_WARN_FRACTION * steps]
        if often:
            self.warned_missing = True
            warnings.warn(
                f"doremi: domain(s) {often} were absent from more than {MISSING_WARN_FRACTION:.0%} of the steps' "
                f"global batches so far; their excess loss goes stale and weights can collapse. The batch is too "
                f"small for {len(self.domains)} domains: raise batch_size or grad_accum",
                stacklevel=2,
            )

    # --- results -----------------------------------------------------------------------
    def average_weights(self) -> list[float]:
        """(1/T) sum_{t=1}^T alpha_t; alpha_0 (uniform) before any update."""
        if self.updates == 0:
            return self.alpha.tolist()
        return (self.alpha_sum / self.updates).tolist()

    def replay_block(self) -> dict:
        """The artifact's ``replay``: everything `replay` needs (artifact.py documents the shape)."""
        if len(self.step_signals) != self.updates:
            raise MixweightError(
                f"doremi: the proxy's state records {len(self.step_signals)} of its {self.updates} "
                "steps' signals (a checkpoint from an older mixweight); retrain the proxy "
                "(delete its work directory) to get a replayable artifact"
            )
        return {
            "domains": list(self.domains),
            "steps": self.updates,
            "initial_weights": list(self.initial_weights),
            "signals": [list(s) for s in self.step_signals],
            "present": [list(p) for p in self.step_present],
            "average_start": 1,
            "eta": self.eta,
            "smoothing": self.smoothing,
            "initial_signal": [INITIAL_EXCESS] * len(self.domains),
        }

    def step_metrics(self) -> dict:
        return {
            "domain_weights": dict(zip(self.domains, self.alpha.tolist())),
            "excess_loss": dict(zip(self.domains, self.excess.tolist())),
        }

    def extra_flops(self, shape, tokens: int) -> dict[str, float]:
        return {} if self.reference is None else reference_forward(self.reference, shape, tokens)

    # --- checkpoint state (JSON) ---------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "domains": list(self.domains),
            "alpha": self.alpha.tolist(),
            "excess": self.excess.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "updates": self.updates,
            "missing": list(self.missing),
            "warned_missing": self.warned_missing,
            "trajectory": [dict(e) for e in self.trajectory],
            "initial_weights": list(self.initial_weights),
            "step_signals": [list(s) for s in self.step_signals],
            "step_present": [list(p) for p in self.step_present],
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("domains") != self.domains:
            raise MixweightError(
                f"doremi: checkpoint state is for domains {state.get('domains')}, this run has {self.domains}"
            )
        self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
        self.excess = torch.tensor(state["excess"], dtype=torch.float64)
        self.alpha_sum = torch.tensor(state["alpha_sum"], dtype=torch.float64)
        self.updates = int(state["updates"])
        self.missing = [int(m) for m in state["missing"]]
        self.warned_missing = bool(state["warned_missing"])
        self.trajectory = [dict(e) for e in state["trajectory"]]
        self.initial_weights = list(state.get("initial_weights", self.initial_weights))
        self.step_signals = [list(s) for s in state.get("step_signals", [])]
        self.step_present = [list(p) for p in state.get("step_present", [])]


def replay(artifact) -> np.ndarray:
    """The per-step weights [T + 1, k] (row 0: the initial weights) recomputed from a DoReMi artifact's ``replay``.

    Same arithmetic as the proxy (`doremi_update` in float64): lambda_t is step t's measured
    excess for the present domains and the carried-forward lambda_{t-1} for the absent ones.
    """
    from mixweight.core.artifact import replay_arrays

    block, _ = replay_arrays(artifact, "doremi", ("eta", "smoothing"), ("initial_signal",))
    eta, smoothing = float(block["eta"]), float(block["smoothing"])
    alpha = torch.tensor(block["initial_weights"], dtype=torch.float64)
    excess = torch.tensor(block.get("initial_signal", [INITIAL_EXCESS] * len(alpha)), dtype=torch.float64)
    rows = [alpha.clone()]
    for signal, present in zip(block["signals"], block["present"]):
        excess = torch.where(torch.tensor(present), torch.tensor(signal, dtype=torch.float64), excess)
        alpha = doremi_update(alpha, excess, eta, smoothing)
        rows.append(alpha.clone())
    return torch.stack(rows).numpy()
