"""`weights verify` for an online run's `RUN/domain_weights.json` (online:odm, online:doremi).

An online artifact has one trajectory entry per phase. Each entry records the state the phase's
mixture was computed from (`signal`, `observed` = the steps observed when it was chosen, DoReMi's
`alpha`), and `method` the options (`reward`, `alpha`, `exploration`, `eta`, `smoothing`, `prior`,
`steps`). `replay_phases` recomputes every phase's mixture with the mixer's own policy
(`mixweight.train.mixers`); `verify_online` compares them, `last_weights` and the step-weighted
average `weights` with what the file says. Only the phase decisions are recomputed: the state's
evolution between phases would need every step's per-domain signal in the file. Like every
verification, it checks consistency of the weights with the recorded signals, not their provenance.
An artifact from before this version lacks the options and is refused by name.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from mixweight.core.artifact import DomainWeights, shown
from mixweight.errors import MixweightError
from mixweight.train.mixers import PREFIX, OnlineMixer, mixer_class, phase_average, state_vector


def _numbers(value, k: int, where: str) -> torch.Tensor:
    try:
        vector = state_vector(value, k, where)
    except ValueError as exc:
        raise MixweightError(str(exc)[:300]) from None
    if not bool(torch.isfinite(vector).all()):
        raise MixweightError(f"{where} must be finite numbers")
    return vector


def _recorded(entry: dict, k: int, label: str, key: str) -> torch.Tensor:
    return _numbers(entry.get(key), k, f"{label} '{key}'")


def _replay_mixer(method: dict, domains: list[str], where: str) -> OnlineMixer:
    """A mixer with the artifact's options; MixweightError naming the first key an earlier version did not record."""
    name = method.get("name", "")[len(PREFIX) :]
    cls = mixer_class(name, where)
    prior = _numbers(method.get("prior"), len(domains), f"{where}: 'method.prior'")
    if bool((prior < 0).any()) or prior.sum() <= 0:
        raise MixweightError(f"{where}: 'method.prior' must be non-negative weights with a positive sum")
    every = method.get("mixing_every")
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise MixweightError(f"{where}: 'method.mixing_every' must be an integer > 0, got {every!r}")
    missing = [key for key in cls.RECORDED if key not in method]
    if missing:
        raise MixweightError(
            f"{where}: 'method' has no {', '.join(repr(m) for m in missing)}: written by an earlier mixweight, whose "
            f"online:{name} rule this version changed; it still trains as a schedule (--domain-weights-every), but "
            "cannot be verified"
        )
    try:
        return cls.from_record(method, domains, prior.tolist(), every)
    except (TypeError, ValueError) as exc:  # MixweightError included: the artifact's values, not a flag
        message = str(exc).removeprefix("train: ").replace(f"'mixing.{name}.", "'method.")  # the record's key
        raise MixweightError(f"{where}: {message}") from None


def replay_phases(artifact: DomainWeights, where: str) -> tuple[list[int], torch.Tensor, int]:
    """(start steps, every phase's mixture [P, k] recomputed from what the phase recorded, steps observed).

    Phase 0 is the prior; phase j > 0 is the method's policy of the state recorded with it (`signal` and
    `observed`, DoReMi's `alpha`), computed by the mixer's own code."""
    domains, k = list(artifact.domains), len(artifact.domains)
    mixer = _replay_mixer(artifact.method, domains, where)
    steps = artifact.method.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise MixweightError(f"{where}: 'method.steps' must be an integer >= 0, got {steps!r}")
    starts, rows = [], []
    for index, entry in enumerate(artifact.trajectory):
        label = f"{where}: trajectory entry {index}"
        step = entry.get("step") if isinstance(entry, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < (starts[-1] + 1 if starts else 0):
            raise MixweightError(f"{label} has step {step!r}; phases start at 0 and their steps increase")
        if index == 0:
            if step != 0:
                raise MixweightError(f"{label} has step {step}; the first phase starts at step 0")
            rows.append(mixer.prior / mixer.prior.sum())
        else:
            observed = entry.get("observed")
            if isinstance(observed, bool) or not isinstance(observed, int) or observed < 0:
                raise MixweightError(f"{label} (step {step}) has no 'observed' step count, got {observed!r}")
            mixer.steps = observed
            mixer.restore_phase(functools.partial(_recorded, entry, k, f"{label} (step {step})"))
            weights = torch.zeros(k, dtype=torch.float64)
            weights[mixer.active] = mixer.policy()
            rows.append(weights / weights.sum())
        starts.append(step)
    if not rows:
        raise MixweightError(f"{where}: 'trajectory' is empty; an online run records one entry per phase")
    return starts, torch.stack(rows), steps


def verify_online(weights: DomainWeights, path, where: str, tolerance: float) -> str:
    """An online run's artifact: every phase's mixture recomputed from the state recorded with it, then
    `last_weights` (the last phase) and `weights` (the phases averaged over the steps trained)."""
    method = weights.method["name"]
    starts, rows, steps = replay_phases(weights, where)
    if not np.isfinite(rows.numpy()).all():
        bad = int(np.flatnonzero(~np.isfinite(rows.numpy()).all(axis=1))[0])
        raise MixweightError(f"{where}: the state recorded with phase {bad} (step {starts[bad]}) gives no mixture")
    worst, first = (0.0, "nothing"), None
    compared = 0

    def compare(recorded, expected, label: str) -> None:
        nonlocal worst, first, compared
        try:
            recorded = np.asarray(recorded, dtype=np.float64)
        except (TypeError, ValueError):
            raise MixweightError(f"{where}: {label} holds weights that are not numbers") from None
        if recorded.shape != (len(weights.domains),):
            raise MixweightError(f"{where}: {label} has {recorded.size} weights for {len(weights.domains)} domains")
        gaps = np.abs(recorded - expected.numpy())
        i = int(gaps.argmax())
        compared += 1
        found = (float(gaps[i]), f"{label}, domain '{shown(weights.domains[i])}'")
        if gaps[i] > worst[0] or worst[1] == "nothing":
            worst = found
        if first is None and gaps[i] > tolerance:
            first = found

    for entry, start, row in zip(weights.trajectory, starts, rows):
        compare(entry.get("weights"), row, f"phase at step {start}")
    if weights.last_weights is not None:
        compare(weights.last_weights, rows[-1], f"last_weights (phase at step {starts[-1]})")
    compare(weights.weights, phase_average(starts, rows, steps), f"final weights (phases averaged over {steps} steps)")
    if first is not None:
        raise MixweightError(
            f"{where}: does not replay: first deviation above the tolerance {tolerance:g} at {first[1]} "
            f"({first[0]:.3g}); largest deviation {worst[0]:.3g} at {worst[1]}; the file was edited or does not "
            f"come from this {method} run"
        )
    return (
        f"{shown(path)}: recomputed {len(starts)} {method} phases from their recorded state; {compared} recorded "
        f"weight vectors match, largest deviation {worst[0]:.3g} (at {worst[1]}) <= {tolerance:g}"
    )
