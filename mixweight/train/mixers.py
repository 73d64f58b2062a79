"""A run's mixers: what each phase samples, static or decided online from the run's own losses.

Every run has a mixer, so the loop has one path: `StaticMixer` follows the phases known when the run
starts (a named mixture, a weights file, a schedule); an `OnlineMixer` (`online:NAME`) chooses each
phase's mixture from the steps it observes. The online mixers are a registry (`MIXERS`,
`register_mixer`, installed packages' entry points in the `mixweight.mixers` group): `ODMMixer`
(online:odm) and `DoReMiMixer` (online:doremi) here, each owning its config keys, their checks, how it
is built from a TrainConfig and from the record of an artifact (`weights verify`), and, for online
DoReMi, the per-sample signal the step measures for it (its `probe`). docs/design.md "Adding an
online mixer"; docs/algorithms.md section 6 has the formulas and their sources.

Each phase records what its mixture was computed from (`signal`, `observed` = steps observed when
it was chosen, DoReMi's `alpha`), so `replay_phases(artifact)` recomputes every phase's mixture from
the run's `domain_weights.json` alone (`mixweight weights verify`). The state (JSON) goes into every
checkpoint; a state without its form marker was written by an earlier mixweight whose rule this
version changed, and is refused with one line rather than continued under another rule.
"""

from __future__ import annotations

import torch

import mixweight
from mixweight.core.artifact import DomainWeights
from mixweight.core.plugins import load_plugins
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.schedule import Phase
from mixweight.sampling.spec import ONLINE_PREFIX
from mixweight.train.step import StepResult

PREFIX = ONLINE_PREFIX  # `online:NAME` (the mixture spec's rule, sampling/spec.py)
PLUGIN_GROUP = "mixweight.mixers"  # an installed package's entry points in this group register their mixers
BUILTIN = ("mixweight.train.odm", "mixweight.train.online_doremi")  # each registers its mixer when imported
EARLIER = (
    "the run cannot continue under another rule: start it afresh in a new --out (its domain_weights.json still "
    "replays as a static schedule with --domain-weights-every)"
)


def state_vector(values, k: int, where: str) -> torch.Tensor:
    if not isinstance(values, list) or len(values) != k or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{where} must be {k} numbers, got {values!r}")
    return torch.tensor(values, dtype=torch.float64)


def phase_average(starts: list[int], weights: torch.Tensor, steps: int) -> torch.Tensor:
    """The phases' proportions [P, k] averaged over steps 0..steps-1, each phase weighted by its trained steps."""
    end = max(steps, 1)
    total = torch.zeros(weights.shape[1], dtype=torch.float64)
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else end
        total += max(min(stop, end) - start, 0) * weights[i]
    return weights[0].clone() if total.sum() <= 0 else total / total.sum()


class Mixer:
    """What the loop asks of a run's mixture, every step: the interface both kinds implement."""

    probe = None  # a SignalProbe (train/step.py) whose per-sample signal the step gathers into StepResult.signal

    def phase_due(self, step: int) -> bool:
        """Whether a new phase starts at `step` (then `start_phase(step)` gives it)."""
        return False

    def start_phase(self, step: int) -> Phase:
        raise NotImplementedError(f"{type(self).__name__} starts no phases")

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        """The optimizer step's result (every sample's loss, domain and the probe's signal, gathered)."""

    def step_metrics(self) -> dict:
        return {}

    def checkpoint_state(self) -> dict:
        """Entries for the checkpoint's state.json (none for a static mixture)."""
        return {}

    def resume(self, state: dict, loader_phases: int) -> list[Phase]:
        """Restore from a checkpoint's state.json; the phases the loader (holding `loader_phases`) lacks."""
        return []

    def write_artifact(self, path, manifest, seed: int, total_steps: int) -> None:
        """The run's weights trajectory so far as a domain_weights.json at `path` (none for a static mixture)."""


class StaticMixer(Mixer):
    """The phases known when the run starts (a named mixture, a weights file, a schedule): nothing to decide."""


class OnlineMixer(Mixer):
    """Shared by the online methods: the phases so far, the artifact, the checkpoint state.

    Domains whose prior weight is 0 (a DoGE artifact's held-out targets) stay at 0 and out of the
    update; the method runs over the `active` domains only, centred on the prior renormalized over them.

    A method subclass sets `name` (online:NAME), `Options` (the dataclass of its options, the
    config's `mixing.NAME` block, checked by its own `validate`; None: it takes none) and `RECORDED`
    (the artifact's `method` keys `from_record` needs), and implements `observe`, `policy`, `signal`,
    `options`, `check_config`, `from_config`
    and `from_record`; `phase_state` and the `_method_state` pair when it keeps more than the phases.
    """

    name = "online"
    Options: type | None = None
    RECORDED: tuple[str, ...] = ()
    # A weights stage whose work the pipeline gives this mixer when the arm leaves `STAGE_KEY` unset (online
    # DoReMi: the doremi stage's reference run as mixing.doremi.reference, a dotted key); None: it reads no stage.
    READS_STAGE: str | None = None
    STAGE_KEY: str | None = None

    def __init__(self, domains: list[str], prior: list[float], every: int):
        self.domains, self.every = list(domains), int(every)
        self.prior = torch.tensor(prior, dtype=torch.float64)
        self.active = self.prior > 0
        self.base = self.prior[self.active] / self.prior[self.active].sum()  # the prior over the active domains
        self.current = self.prior.clone()  # the proportions the loader samples now
        self.steps = 0  # optimizer steps observed
        self.phases: list[dict] = [{"start_step": 0, "weights": self.prior.tolist(), "signal": None}]

    # the loop's calls
    def phase_due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and self.phases[-1]["start_step"] < step

    def start_phase(self, step: int) -> Phase:
        """The next phase, from step `step` on: the method's current proportions."""
        weights = torch.zeros_like(self.prior)
        weights[self.active] = self.policy()
        weights = weights / weights.sum()
        self.current = weights
        phase = {"start_step": step, "weights": weights.tolist(), "signal": self.signal(), "observed": self.steps}
        self.phases.append({**phase, **self.phase_state()})
        return Phase(step, dict(zip(self.domains, weights.tolist())))

    def loader_phases(self) -> list[Phase]:
        return [Phase(p["start_step"], dict(zip(self.domains, p["weights"]))) for p in self.phases]

    def checkpoint_state(self) -> dict:
        return {"mixing": self.state_dict()}

    def resume(self, state: dict, loader_phases: int) -> list[Phase]:
        self.load_state_dict(state["mixing"])
        return self.loader_phases()[loader_phases:]

    def write_artifact(self, path, manifest, seed: int, total_steps: int) -> None:
        self.artifact(manifest, seed, total_steps).write(path)

    # what a method implements
    @classmethod
    def check_config(cls, config, require_paths: bool = True) -> None:
        """What its options (checked by their own validate) need of the rest of a TrainConfig that names it
        (`require_paths=False`: paths the caller sets later)."""

    @classmethod
    def check_unused(cls, config) -> None:
        """Its keys of a TrainConfig that does not name it: refuse one that would be silently ignored."""

    @classmethod
    def from_config(cls, config, corpus, prior: list[float]) -> "OnlineMixer":
        """The run's mixer (anything it loads, such as a reference model, checked before --out is written)."""
        raise NotImplementedError

    @classmethod
    def from_record(cls, method: dict, domains: list[str], prior: list[float], every: int) -> "OnlineMixer":
        """A mixer with an artifact's recorded options (its `RECORDED` keys present), for `weights verify`."""
        raise NotImplementedError

    def restore_phase(self, vector) -> None:
        """Set the state `policy` reads from a phase's record, `vector(key)` its checked numbers (weights verify)."""
        raise NotImplementedError

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        raise NotImplementedError

    def policy(self) -> torch.Tensor:
        """The next phase's proportions over the active domains."""
        raise NotImplementedError

    def signal(self) -> list[float]:
        raise NotImplementedError

    def phase_state(self) -> dict:
        """What a phase records beside its signal so that its mixture can be recomputed (`replay_phases`)."""
        return {}

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
        weights = torch.tensor([p["weights"] for p in self.phases], dtype=torch.float64)
        return phase_average([p["start_step"] for p in self.phases], weights, min(self.steps, total_steps)).tolist()

    def artifact(self, manifest, seed: int, total_steps: int) -> DomainWeights:
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
                {"step": p["start_step"], **{k: v for k, v in p.items() if k != "start_step"}} for p in self.phases
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
        self._check_form(state)
        k = len(self.domains)
        self.steps = int(state["steps"])
        self.current = state_vector(state["current"], k, "online mixing 'current'")
        phases = state["phases"]
        if not isinstance(phases, list) or not phases or phases[0].get("start_step") != 0:
            raise ValueError("online mixing 'phases' must be a list starting at step 0")
        self.phases = [self._load_phase(p, k) for p in phases]
        self._load_method_state(state)

    def _load_phase(self, phase: dict, k: int) -> dict:
        loaded = {
            "start_step": int(phase["start_step"]),
            "weights": state_vector(phase["weights"], k, "phase weights").tolist(),
            "signal": phase.get("signal"),
        }
        if phase["start_step"] > 0:
            loaded["observed"] = int(phase["observed"])
            for key in self.phase_state():
                loaded[key] = state_vector(phase[key], k, f"phase {key!r}").tolist()
        return loaded

    def _check_form(self, state: dict) -> None:
        """Refuse a state from before this version's rule (MixweightError: one line, not 'damaged')."""

    def _method_state(self) -> dict:
        return {}

    def _load_method_state(self, state: dict) -> None:
        pass


# --- the registry ---------------------------------------------------------------------------------
MIXERS: dict[str, type[OnlineMixer]] = {}
_loaded = False


def register_mixer(cls: type[OnlineMixer]) -> type[OnlineMixer]:
    """Make `online:<cls.name>` a value of domain_weights (a class decorator; a plug-in calls it when imported)."""
    if not (isinstance(cls.name, str) and cls.name and cls.name != OnlineMixer.name):
        raise ValueError(f"{cls.__name__}: an online mixer needs its own `name`")
    if cls.name in ("every", "prior", "mixers"):  # its options block would be mixing.<name>: a shared key's name
        raise ValueError(f"{cls.__name__}: '{cls.name}' names a key of the mixing block; choose another name")
    MIXERS[cls.name] = cls
    return cls


def builtin_mixers() -> dict[str, type[OnlineMixer]]:
    """The online mixers mixweight ships (importing each module registers its mixer)."""
    import importlib

    return {cls.name: cls for cls in (importlib.import_module(m).MIXER for m in BUILTIN)}


def mixers() -> dict[str, type[OnlineMixer]]:
    """Every online mixer by name: the built-in ones, then those of installed plug-ins (entry points)."""
    global _loaded
    if not _loaded:
        _loaded = True
        load_plugins(PLUGIN_GROUP, "online mixer")  # each module registers its mixers
    return {**builtin_mixers(), **MIXERS}  # the built-in ones first, in BUILTIN's order, whatever imported them


def mixer_class(name: str, where: str = "train") -> type[OnlineMixer]:
    """The class of `online:<name>`; an unknown name is one line with the closest one."""
    known = mixers()
    if name not in known:
        choices = [PREFIX + m for m in known]
        raise MixweightError(
            f"{where}: domain_weights '{PREFIX}{name}': unknown online method; "
            f"{did_you_mean(PREFIX + name, choices)}online methods: {', '.join(choices)}"
        )
    return known[name]
