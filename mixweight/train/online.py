"""Online domain mixing in the main run: `--domain-weights online:odm | online:doremi --mixing-every K`.

The main model is the proxy. After every optimizer step the loop hands the mixer the step's
result (every sample's loss and domain in global order, gathered across processes); every K
steps the mixer's current proportions start a new phase of the `DomainMixture` (a new dataset
built with seed + phase index, as for a static schedule). docs/algorithms.md section 6 has the
formulas and their sources; docs/design.md section 5.4 where this sits in the loop.

    step s:   phase due (s > 0, s % K == 0)?  -> loader.append_phase(Phase(s, mixer.start_phase(s)))
              micro-batches -> objective (sample weights within the batch) -> optimizer step
              mixer.observe(s, result, micro_batches)
    save:     state.json["mixing"] = mixer.state_dict();  RUN/domain_weights.json = mixer.artifact()
    resume:   mixer.load_state_dict(...) -> its phases appended to the loader -> loader.load_state_dict(...)

- `ODMMixer` (online:odm): ODM's EXP3 bandit, the reward of each domain present in the step being
  its mean training loss importance-weighted by its sampling probability. No extra forward.
- `DoReMiMixer` (online:doremi): DoReMi's update (the same `doremi_update` as the offline proxy) on
  the per-domain excess loss over a reference model, from one no-grad reference forward per
  micro-batch (`ExcessSignal`, the step's sample signal, gathered across processes).

Every decision is made from gathered tensors in float64 on the CPU, so N processes decide what
one does; the state (rewards or weights, excess, step count, the phases so far) is JSON and goes
into every checkpoint, so a resumed run makes the same decisions. Nothing here is random.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import mixweight
from mixweight.core.artifact import DomainWeights, resolve_proportions
from mixweight.core.chunked_loss import lm_token_losses
from mixweight.core.config import require
from mixweight.data.corpus import Corpus
from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.schedule import Phase, resolve_schedule
from mixweight.train.compute import reference_forward
from mixweight.train.objective import WeightedLoss
from mixweight.train.reference import check_reference_run
from mixweight.train.step import StepReduction, StepResult
from mixweight.weighting.domain_update import (
    domain_means,
    doremi_update,
    exp3_exploration,
    exp3_policy,
    exp3_rewards,
)

PREFIX = "online:"
ONLINE_METHODS = ("odm", "doremi")
ARTIFACT_NAME = "domain_weights.json"
INITIAL_EXCESS = 0.0  # lambda_0, as the offline DoReMi proxy (docs/algorithms.md section 2.5)


# --- the config ---------------------------------------------------------------------------------
def online_method(spec) -> str | None:
    """'odm' / 'doremi' for `online:odm` / `online:doremi`; None for a static spec; unknown methods refused."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        return None
    method = spec[len(PREFIX) :]
    if method not in ONLINE_METHODS:
        choices = [PREFIX + m for m in ONLINE_METHODS]
        hint = did_you_mean(spec, choices)
        raise MixweightError(
            f"train: domain_weights '{spec}': unknown online method; {hint}online methods: {', '.join(choices)}"
        )
    return method


def check_online_config(config, require_reference: bool = True) -> None:
    """The online-mixing keys of a TrainConfig (called by TrainConfig.validate; `require_reference=False` when the
    caller sets online DoReMi's reference run later, as the pipeline does)."""
    method = online_method(config.domain_weights)
    if method is None:
        require(
            config.mixing_every == 0,
            f"train: 'mixing_every' {config.mixing_every} is for online domain weights (domain_weights online:odm or "
            f"online:doremi), not '{config.domain_weights}'; drop it or use domain_weights_every for a weights file",
        )
        require(
            config.doremi_reference is None,
            f"train: 'doremi_reference' is for domain_weights online:doremi, not '{config.domain_weights}'",
        )
        return
    require(
        config.mixing_every > 0,
        f"train: domain_weights {config.domain_weights} needs 'mixing_every' > 0 (steps per phase: the mixture is "
        f"re-chosen every that many steps), got {config.mixing_every}",
    )
    require(
        config.domain_weights_every == 0,
        f"train: 'domain_weights_every' follows a weights file's trajectory; online weights make their own phases "
        f"(mixing_every), so drop domain_weights_every {config.domain_weights_every}",
    )
    require(
        config.max_epochs is None,
        "train: 'max_epochs' projects the phases known when the run starts onto an epoch budget; online weights "
        "decide their phases during the run, so the two cannot be combined: drop max_epochs",
    )
    require(
        config.mixing_prior in ("natural", "uniform") or Path(config.mixing_prior).is_file(),
        f"train: 'mixing_prior' must be natural, uniform or a domain_weights.json file; {config.mixing_prior!r} is "
        "none of these",
    )
    if method == "odm":
        require(0 <= config.odm_alpha < 1, f"train: 'odm_alpha' must be in [0, 1), got {config.odm_alpha}")
        require(
            config.odm_exploration is None or 0 < config.odm_exploration < 1,
            f"train: 'odm_exploration' must be in (0, 1/k] for k domains, got {config.odm_exploration}",
        )
    else:
        require(
            config.doremi_reference is not None or not require_reference,
            "train: domain_weights online:doremi needs 'doremi_reference', the reference run directory (`mixweight "
            "weights doremi` leaves it at <out stem>.work/round-0/reference; the pipeline passes its own)",
        )
        require(config.doremi_eta > 0, f"train: 'doremi_eta' must be > 0, got {config.doremi_eta}")
        require(
            0 <= config.doremi_smoothing < 1,
            f"train: 'doremi_smoothing' must be in [0, 1), got {config.doremi_smoothing}",
        )
        require(
            config.weighting_scope == "step",
            "train: online:doremi measures the excess loss of the whole step (a sample signal); weighting_scope "
            "micro_batch cannot carry it: use weighting_scope step",
        )


def resolve_phases(manifest: Manifest, config) -> list[Phase]:
    """The phases known when the run starts: a static spec's schedule, or the online prior as phase 0."""
    if online_method(config.domain_weights) is None:
        return resolve_schedule(manifest, config.domain_weights, config.domain_weights_every)
    try:
        return [Phase(0, resolve_proportions(manifest, config.mixing_prior))]
    except MixweightError as exc:
        raise MixweightError(f"train: mixing_prior: {exc}") from exc


# --- the reference model of online DoReMi --------------------------------------------------------
def load_reference(run_dir, corpus: Corpus):
    """The reference run's newest model, after `check_reference_run` (this corpus, this vocabulary)."""
    from mixweight.core.model import load_model

    latest = check_reference_run(run_dir, corpus, "train: doremi_reference")
    return load_model(latest / "model").eval().requires_grad_(False)


class ExcessSignal(StepReduction):
    """Wraps the run's SampleReduction: the same sample weights, plus DoReMi's per-sample excess signal.

    `sample_signal` is the offline proxy's (docs/algorithms.md section 2.2): per sample, the sum over
    counted tokens of max(l_model - l_ref, 0) and the token count, from the step's detached per-token
    losses and one no-grad reference forward, under the step's autocast. The step gathers it across
    micro-batches and processes; `weights` keeps it for the mixer and delegates the weights.
    """

    def __init__(self, inner, reference: torch.nn.Module, loss_impl: str = "auto"):
        self.inner, self.reference, self.loss_impl = inner, reference, loss_impl
        self.last_signal: torch.Tensor | None = None

    @property
    def needs_whole_step(self) -> bool:  # the wrapped reduction's, whichever `attach` put in
        return self.inner.needs_whole_step

    @torch.no_grad()
    def sample_signal(self, input_ids: torch.Tensor, token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if next(self.reference.parameters()).device != input_ids.device:
            self.reference.to(input_ids.device)
        ref_loss, _ = lm_token_losses(self.reference, input_ids, self.loss_impl)
        excess = torch.clamp(token_losses.float() - ref_loss, min=0.0) * mask
        return torch.stack([excess.sum(dim=1), mask.sum(dim=1).float()], dim=1)

    def weights(self, losses, domains, step, signal=None):
        self.last_signal = None if signal is None else signal.detach().to("cpu", torch.float64)
        return self.inner.weights(losses, domains, step, signal=None)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def step_metrics(self) -> dict:
        return self.inner.step_metrics()

    def extra_flops(self, shape, tokens: int) -> dict[str, float]:
        return {**self.inner.extra_flops(shape, tokens), **reference_forward(self.reference, shape, tokens)}


# --- the mixers -----------------------------------------------------------------------------------
def _vector(values, k: int, where: str) -> torch.Tensor:
    if not isinstance(values, list) or len(values) != k or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{where} must be {k} numbers, got {values!r}")
    return torch.tensor(values, dtype=torch.float64)


class OnlineMixer:
    """Shared by the methods: the phases so far, the artifact, the checkpoint state.

    Domains whose prior weight is 0 (a DoGE artifact's held-out targets) stay at 0 and out of the
    update; the method runs over the `active` domains only.
    """

    name = "online"

    def __init__(self, domains: list[str], prior: list[float], every: int):
        self.domains, self.every = list(domains), int(every)
        self.prior = torch.tensor(prior, dtype=torch.float64)
        self.active = self.prior > 0
        self.current = self.prior.clone()  # the proportions the loader samples now
        self.steps = 0  # optimizer steps observed
        self.phases: list[dict] = [{"start_step": 0, "weights": self.prior.tolist(), "signal": None}]

    # the loop's calls
    def phase_due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and self.phases[-1]["start_step"] < step

    def start_phase(self, step: int) -> Phase:
        """The next phase, from step `step` on: the method's current proportions."""
        weights = torch.tensor(self.next_weights(), dtype=torch.float64)
        weights = torch.where(self.active, weights, torch.zeros_like(weights))
        weights = weights / weights.sum()
        self.current = weights
        self.phases.append({"start_step": step, "weights": weights.tolist(), "signal": self.signal()})
        return Phase(step, dict(zip(self.domains, weights.tolist())))

    def loader_phases(self) -> list[Phase]:
        return [Phase(p["start_step"], dict(zip(self.domains, p["weights"]))) for p in self.phases]

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        raise NotImplementedError

    def next_weights(self) -> list[float]:
        raise NotImplementedError

    def signal(self) -> list[float]:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    # what is recorded
    def step_metrics(self) -> dict:
        last = self.phases[-1]
        return {
            "online_mixing": {
                "method": self.name,
                "phase": len(self.phases) - 1,
                "phase_start": last["start_step"],
                "weights": dict(zip(self.domains, last["weights"])),
                "signal": dict(zip(self.domains, self.signal())),
            }
        }

    def average_weights(self, total_steps: int) -> list[float]:
        """The proportions averaged over the steps trained so far (each phase weighted by its steps)."""
        end = max(min(self.steps, total_steps), 1)
        total = torch.zeros_like(self.prior)
        for i, phase in enumerate(self.phases):
            stop = self.phases[i + 1]["start_step"] if i + 1 < len(self.phases) else end
            length = max(min(stop, end) - phase["start_step"], 0)
            total += length * torch.tensor(phase["weights"], dtype=torch.float64)
        if total.sum() <= 0:
            return self.phases[0]["weights"]
        return (total / total.sum()).tolist()

    def artifact(self, manifest: Manifest, seed: int, total_steps: int) -> DomainWeights:
        return DomainWeights(
            domains=list(self.domains),
            weights=self.average_weights(total_steps),
            last_weights=list(self.phases[-1]["weights"]),
            method={
                "name": f"{PREFIX}{self.name}",
                "mixing_every": self.every,
                "prior": self.prior.tolist(),
                "steps": self.steps,
                "average": "proportions averaged over the trained steps (each phase weighted by its length)",
                "replay": f"--domain-weights THIS_FILE --domain-weights-every {self.every} follows the trajectory",
                **self.options(),
            },
            trajectory=[
                {"step": p["start_step"], "weights": list(p["weights"]), "signal": p["signal"]} for p in self.phases
            ],
            provenance={
                "seed": seed,
                "tokenizer_fingerprint": manifest.tokenizer.get("fingerprint"),
                "domain_token_counts": manifest.train_tokens(),
                "corpus_config_hash": manifest.config_hash,
                "mixweight_version": mixweight.__version__,
            },
        )

    # checkpoint state (JSON)
    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "domains": list(self.domains),
            "every": self.every,
            "steps": self.steps,
            "current": self.current.tolist(),
            "phases": [dict(p) for p in self.phases],
            **self._method_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name or state.get("domains") != self.domains:
            raise ValueError(
                f"online mixing state is for {state.get('method')!r} over {state.get('domains')}, "
                f"this run mixes {self.name!r} over {self.domains}"
            )
        k = len(self.domains)
        self.steps = int(state["steps"])
        self.current = _vector(state["current"], k, "online mixing 'current'")
        phases = state["phases"]
        if not isinstance(phases, list) or not phases or phases[0].get("start_step") != 0:
            raise ValueError("online mixing 'phases' must be a list starting at step 0")
        self.phases = [
            {"start_step": int(p["start_step"]), "weights": _vector(p["weights"], k, "phase weights").tolist(),
             "signal": p.get("signal")}
            for p in phases
        ]  # fmt: skip
        self._load_method_state(state)

    def _method_state(self) -> dict:
        return {}

    def _load_method_state(self, state: dict) -> None:
        pass


class ODMMixer(OnlineMixer):
    """ODM (Albalak et al., 2023): EXP3 over the domains, reward = the domain's training loss.

    docs/algorithms.md section 6.2."""

    name = "odm"

    def __init__(self, domains, prior, every, alpha: float = 0.9, exploration: float | None = None):
        super().__init__(domains, prior, every)
        self.alpha, self.fixed = float(alpha), exploration
        k = int(self.active.sum())
        if exploration is not None and not 0 < exploration <= 1.0 / k:
            raise MixweightError(
                f"train: 'odm_exploration' must be in (0, 1/k] = (0, {1.0 / k:.6g}] for the {k} sampled domains "
                f"(the exploration mass k * epsilon cannot exceed 1), got {exploration}"
            )
        self.rewards = torch.zeros(len(self.domains), dtype=torch.float64)

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        losses = result.losses.detach().to(torch.float64)
        ones = torch.ones_like(losses)
        means, present = domain_means(losses, ones, result.domains, torch.isfinite(losses), len(self.domains))
        present = present & self.active
        self.rewards = exp3_rewards(self.rewards, means, present, self.current.clamp(min=1e-300), self.alpha)
        self.steps += 1

    def exploration(self, t: int) -> float:
        return exp3_exploration(int(self.active.sum()), t, self.fixed)

    def next_weights(self) -> list[float]:
        active = self.active
        policy = torch.zeros_like(self.prior)
        policy[active] = exp3_policy(
            self.rewards[active], self.prior[active] / self.prior[active].sum(),
            self.exploration(self.steps - 1), self.exploration(self.steps),
        )  # fmt: skip
        return policy.tolist()

    def signal(self) -> list[float]:
        return self.rewards.tolist()

    def options(self) -> dict:
        return {
            "alpha": self.alpha,
            "exploration": "min(1/k, sqrt(ln k / (k t)))" if self.fixed is None else self.fixed,
            "signal": "smoothed importance-weighted reward R (loss / pi) at the phase's start",
        }

    def step_metrics(self) -> dict:
        metrics = super().step_metrics()
        metrics["online_mixing"]["exploration"] = self.exploration(self.steps)
        return metrics

    def _method_state(self) -> dict:
        return {"rewards": self.rewards.tolist()}

    def _load_method_state(self, state: dict) -> None:
        self.rewards = _vector(state["rewards"], len(self.domains), "online mixing 'rewards'")


class DoReMiMixer(OnlineMixer):
    """Online DoReMi: alpha <- doremi_update(alpha, lambda) every step on the excess loss.

    docs/algorithms.md section 6.3."""

    name = "doremi"

    def __init__(self, domains, prior, every, excess: ExcessSignal, eta: float = 1.0, smoothing: float = 1e-3):
        super().__init__(domains, prior, every)
        self.signal_source, self.eta, self.smoothing = excess, float(eta), float(smoothing)
        self.alpha = self.prior.clone()
        self.excess = torch.full((len(self.domains),), INITIAL_EXCESS, dtype=torch.float64)

    def update(self, signal: torch.Tensor, losses: torch.Tensor, domains: torch.Tensor) -> None:
        """One step's update from the gathered [N, 2] signal (the offline proxy's arithmetic)."""
        excess_sum, counts = signal[:, 0], signal[:, 1]
        valid = torch.isfinite(losses.detach().cpu()) & torch.isfinite(excess_sum) & (counts > 0)
        measured, present = domain_means(excess_sum, counts, domains.cpu(), valid, len(self.domains))
        self.excess = torch.where(present, measured, self.excess)
        active = self.active
        alpha = torch.zeros_like(self.alpha)
        alpha[active] = doremi_update(self.alpha[active], self.excess[active], self.eta, self.smoothing)
        self.alpha = alpha

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        signal = self.signal_source.last_signal
        if signal is None:
            raise MixweightError("train: online:doremi: the step produced no excess-loss signal")
        self.update(signal, result.losses, result.domains)
        self.signal_source.last_signal = None
        self.steps += 1

    def next_weights(self) -> list[float]:
        return self.alpha.tolist()

    def signal(self) -> list[float]:
        return self.excess.tolist()

    def options(self) -> dict:
        return {"eta": self.eta, "smoothing": self.smoothing, "signal": "excess loss lambda at the phase's start"}

    def _method_state(self) -> dict:
        return {"alpha": self.alpha.tolist(), "excess": self.excess.tolist()}

    def _load_method_state(self, state: dict) -> None:
        k = len(self.domains)
        self.alpha = _vector(state["alpha"], k, "online mixing 'alpha'")
        self.excess = _vector(state["excess"], k, "online mixing 'excess'")


def build_mixer(config, corpus: Corpus, phases: list[Phase]) -> OnlineMixer | None:
    """The run's mixer (None for static weights); online DoReMi's reference is loaded and checked here,
    before anything is written into --out."""
    method = online_method(config.domain_weights)
    if method is None:
        return None
    manifest = corpus.manifest
    prior = [phases[0].weights[d] for d in manifest.domains]
    if not any(w > 0 for w in prior) or not all(math.isfinite(w) for w in prior):
        raise MixweightError(f"train: mixing_prior {config.mixing_prior}: no domain has a weight above 0")
    if method == "odm":
        return ODMMixer(manifest.domains, prior, config.mixing_every, config.odm_alpha, config.odm_exploration)
    reference = load_reference(config.doremi_reference, corpus)
    return DoReMiMixer(
        manifest.domains,
        prior,
        config.mixing_every,
        ExcessSignal(None, reference, config.loss_impl),
        config.doremi_eta,
        config.doremi_smoothing,
    )


def attach(mixer: OnlineMixer | None, objective):
    """Online DoReMi's excess signal rides on the run's step objective (its SampleReduction is wrapped)."""
    if not isinstance(mixer, DoReMiMixer):
        return objective
    if not isinstance(objective, WeightedLoss):
        raise MixweightError("train: online:doremi needs the default step objective (per-sample losses)")
    mixer.signal_source.inner = objective.reduction
    objective.reduction = mixer.signal_source
    return objective
