"""Online domain mixing in the main run: `--domain-weights online:NAME --mixing.every K`.

The main model is the proxy. After every optimizer step the loop hands the run's mixer the step's
result (every sample's loss and domain in global order, and the mixer's probe signal, gathered across
processes); every K steps the mixer's current proportions start a new phase of the `DomainMixture` (a
new dataset built with seed + phase index, as for a static schedule). docs/algorithms.md section 6 has
the formulas and their sources; docs/design.md section 5.4 where this sits in the loop.

    step s:   phase due (s > 0, s % K == 0)?  -> loader.append_phase(mixer.start_phase(s))
              micro-batches -> objective (sample weights within the batch; the probe's signal) -> optimizer step
              mixer.observe(s, result, micro_batches)
    save:     state.json["mixing"] = mixer.state_dict();  RUN/domain_weights.json = mixer.artifact()
    resume:   mixer.resume(state) -> its phases appended to the loader -> loader.load_state_dict(...)

The mixers (state, update, policy, what a phase records) are in `mixweight.train.mixers` (the base and
the registry), `odm.py` and `online_doremi.py`; this module checks the config's mixing keys, resolves
the phases known at the start and builds the run's mixer (a `StaticMixer` for a fixed mixture).

Every decision is made from gathered tensors in float64 on the CPU, so N processes decide what
one does; the state (rewards or weights, excess, step count, the phases so far) is JSON and goes
into every checkpoint, so a resumed run makes the same decisions. Nothing here is random.
"""

from __future__ import annotations

import math
from pathlib import Path

from mixweight.core.artifact import resolve_proportions
from mixweight.core.config import require
from mixweight.data.corpus import Corpus
from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError
from mixweight.sampling.schedule import Phase, resolve_schedule
from mixweight.train.mixers import Mixer, StaticMixer, mixer_class, mixers

ARTIFACT_NAME = "domain_weights.json"


# --- the config ---------------------------------------------------------------------------------
def check_online_config(config, require_reference: bool = True) -> None:
    """The online-mixing keys of a TrainConfig (called by TrainConfig.validate; `require_reference=False` when the
    caller sets paths such as online DoReMi's reference run later, as the pipeline does)."""
    spec = config.mixture
    if not spec.online:
        require(
            config.mixing.every == 0,
            f"train: 'mixing.every' {config.mixing.every} is for online domain weights (domain_weights online:odm or "
            f"online:doremi), not '{config.domain_weights}'; drop it or use domain_weights_every for a weights file",
        )
        for cls in mixers().values():
            cls.check_unused(config)
        return
    method = mixer_class(spec.name)
    require(
        config.mixing.every > 0,
        f"train: domain_weights {config.domain_weights} needs 'mixing.every' > 0 (steps per phase: the mixture is "
        f"re-chosen every that many steps), got {config.mixing.every}",
    )
    require(
        config.domain_weights_every == 0,
        f"train: 'domain_weights_every' follows a weights file's trajectory; online weights make their own phases "
        f"(mixing.every), so drop domain_weights_every {config.domain_weights_every}",
    )
    require(
        config.max_epochs is None,
        "train: 'max_epochs' projects the phases known when the run starts onto an epoch budget; online weights "
        "decide their phases during the run, so the two cannot be combined: drop max_epochs",
    )
    require(
        config.mixing.prior in ("natural", "uniform") or Path(config.mixing.prior).is_file(),
        f"train: 'mixing.prior' must be natural, uniform or a domain_weights.json file; {config.mixing.prior!r} is "
        "none of these",
    )
    method.check_config(config, require_reference)


def resolve_phases(manifest: Manifest, config) -> list[Phase]:
    """The phases known when the run starts: a static spec's schedule, or the online prior as phase 0."""
    if not config.mixture.online:
        return resolve_schedule(manifest, config.domain_weights, config.domain_weights_every)
    try:
        return [Phase(0, resolve_proportions(manifest, config.mixing.prior))]
    except MixweightError as exc:
        raise MixweightError(f"train: mixing.prior: {exc}") from exc


def build_mixer(config, corpus: Corpus, phases: list[Phase]) -> Mixer:
    """The run's mixer: a StaticMixer for a fixed mixture, else the online method's (anything it loads, online
    DoReMi's reference, checked here, before anything is written into --out)."""
    spec = config.mixture
    if not spec.online:
        return StaticMixer()
    prior = [phases[0].weights[d] for d in corpus.manifest.domains]
    if not any(w > 0 for w in prior) or not all(math.isfinite(w) for w in prior):
        raise MixweightError(f"train: mixing.prior {config.mixing.prior}: no domain has a weight above 0")
    return mixer_class(spec.name).from_config(config, corpus, prior)
