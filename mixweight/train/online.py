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

- `ODMMixer` (online:odm): ODM's bandit as its official code computes it, rewarded by each domain's
  training loss in the step (smoothed exp(loss) by default). No extra forward.
- `DoReMiMixer` (online:doremi): DoReMi's update (the same `doremi_update` as the offline proxy) on
  the per-domain excess loss over a reference model, from one no-grad reference forward per
  micro-batch (`ExcessSignal`, the step's sample signal, gathered across processes); each phase
  samples its alpha mixed with the prior (an exploration floor).

The mixers themselves (state, update, policy, what a phase records) are in `mixweight.train.mixers`;
this module checks the config, loads the reference, builds the mixer and wires it to the objective.

Every decision is made from gathered tensors in float64 on the CPU, so N processes decide what
one does; the state (rewards or weights, excess, step count, the phases so far) is JSON and goes
into every checkpoint, so a resumed run makes the same decisions. Nothing here is random.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mixweight.core.artifact import resolve_proportions
from mixweight.core.chunked_loss import lm_token_losses
from mixweight.core.config import require
from mixweight.data.corpus import Corpus
from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.schedule import Phase, resolve_schedule
from mixweight.train.compute import reference_forward
from mixweight.train.mixers import ODM_REWARDS, PREFIX, DoReMiMixer, ODMMixer, OnlineMixer
from mixweight.train.objective import WeightedLoss
from mixweight.train.reference import check_reference_run
from mixweight.train.step import StepReduction

__all__ = ["DoReMiMixer", "ExcessSignal", "ODMMixer", "OnlineMixer"]  # the mixers live in mixers.py

ONLINE_METHODS = ("odm", "doremi")
ARTIFACT_NAME = "domain_weights.json"


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
        require(
            config.odm_reward in ODM_REWARDS,
            f"train: 'odm_reward' must be one of {', '.join(ODM_REWARDS)}, got {config.odm_reward!r}",
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
            0 <= config.doremi_exploration <= 1,
            f"train: 'doremi_exploration' must be in [0, 1] (the prior's share of each phase), got "
            f"{config.doremi_exploration}",
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
        return ODMMixer(
            manifest.domains, prior, config.mixing_every, config.odm_alpha, config.odm_exploration, config.odm_reward
        )
    reference = load_reference(config.doremi_reference, corpus)
    return DoReMiMixer(
        manifest.domains,
        prior,
        config.mixing_every,
        ExcessSignal(None, reference, config.loss_impl),
        config.doremi_eta,
        config.doremi_smoothing,
        config.doremi_exploration,
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
