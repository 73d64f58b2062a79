"""`mixweight weights verify FILE`: replay a weights method from its artifact alone.

The artifact's ``replay`` block (see artifact.py) holds the initial weights, every step's
signal and which domains were present, and the method's parameters. The method's
``replay(artifact)`` (`mixweight.domain.doremi.replay`, `mixweight.domain.doge.replay`)
recomputes the per-step weights [T + 1, k]; this module compares them with what the
artifact records:

- every ``trajectory`` entry (weights after that step),
- ``last_weights`` (after step T),
- ``weights``: the mean of rows ``average_start``..T (domains outside the replay, the
  held-out targets, must be 0),

and reports the largest deviation and where it is. Within TOLERANCE the weights follow
from the recorded signals; beyond it something was edited or the file is not what it says.

A regmix artifact has no update rule to replay: its swarm table (each run's mixture and losses)
is refitted and re-optimised with the recorded options (`regmix_run.replay_weights`) and the
result compared with ``weights``.

An online run's ``RUN/domain_weights.json`` (online:odm, online:doremi) records, with each phase,
the state its mixture was computed from; `verify_online` recomputes every phase's mixture with the
mixer's own policy (`mixweight.domain.online_verify`), then ``last_weights`` and the
step-weighted average ``weights``, and compares.

Every verification checks that the recorded weights follow from the recorded signals, not where the
signals came from: a file whose signals were forged together with matching weights passes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from mixweight.core.artifact import DomainWeights, load_domain_weights, replay_arrays, shown
from mixweight.errors import MixweightError

TOLERANCE = 1e-6
METHODS = {"doremi": "mixweight.domain.doremi", "doge": "mixweight.domain.doge"}
VERIFIED = ("doremi", "doge", "regmix", "online:odm", "online:doremi")  # every method verify_file checks


@dataclass
class Verification:
    method: str
    steps: int
    max_deviation: float
    where: str  # e.g. "trajectory step 10, domain 'copy'"
    compared: int  # how many recorded vectors were compared
    first: tuple[float, str] | None  # the first (in step order) deviation above the tolerance, and where


def _replay_rows(weights: DomainWeights, method: str) -> np.ndarray:
    module = importlib.import_module(METHODS[method])
    replay = getattr(module, "replay", None)
    if replay is None:
        raise MixweightError(f"weights verify: this mixweight cannot replay {method} artifacts yet")
    return np.asarray(replay(weights), dtype=np.float64)


def verify_weights(weights: DomainWeights, where: str = "weights file", tolerance: float = TOLERANCE) -> Verification:
    method = weights.method.get("name")
    if method not in METHODS:
        raise MixweightError(f"{where}: 'method.name' is {method!r}; verify checks {', '.join(VERIFIED)} artifacts")
    block, _ = replay_arrays(weights, method)
    rows = _replay_rows(weights, method)
    steps, replay_domains = block["steps"], block["domains"]
    if rows.shape != (steps + 1, len(replay_domains)) or not np.isfinite(rows).all():
        raise MixweightError(
            f"{where}: the replay gave weights of shape {rows.shape} (or non-finite ones), "
            f"expected {(steps + 1, len(replay_domains))}"
        )
    columns = [weights.domains.index(d) for d in replay_domains]
    worst, first = (0.0, "nothing"), None
    compared = 0

    def compare(recorded, expected: np.ndarray, label: str) -> None:
        nonlocal worst, first, compared
        if isinstance(recorded, dict):  # DoGE's trajectory keeps {domain: weight} maps
            unknown = [d for d in recorded if d not in weights.domains]
            if unknown:
                raise MixweightError(f"{where}: {label} names domains {unknown} that are not in 'domains'")
            recorded = [recorded.get(d, 0.0) for d in weights.domains]
        try:
            recorded = np.asarray(recorded, dtype=np.float64)
        except (TypeError, ValueError):
            raise MixweightError(f"{where}: {label} holds weights that are not numbers") from None
        if recorded.shape != (len(weights.domains),):
            raise MixweightError(f"{where}: {label} has {recorded.size} weights for {len(weights.domains)} domains")
        full = np.zeros(len(weights.domains))  # domains outside the replay (held-out targets) must be 0
        full[columns] = expected
        gaps = np.abs(recorded - full)
        i = int(gaps.argmax())
        compared += 1
        found = (float(gaps[i]), f"{label}, domain '{shown(weights.domains[i])}'")
        if gaps[i] > worst[0] or worst[1] == "nothing":
            worst = found
        if first is None and gaps[i] > tolerance:
            first = found

    for index, entry in sorted(enumerate(weights.trajectory), key=lambda e: _step_key(e[1])):
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
            raise MixweightError(
                f"{where}: trajectory entry {index} has step {step!r}, outside the replay's 0..{steps}"
            )
        if not isinstance(entry.get("weights"), (list, dict)):
            raise MixweightError(f"{where}: trajectory entry {index} (step {step}) has no 'weights' list or map")
        compare(entry["weights"], rows[step], f"trajectory step {step}")
    if weights.last_weights is not None:
        compare(weights.last_weights, rows[steps], f"last_weights (step {steps})")
    start = block.get("average_start", 1)
    average = rows[start:].mean(axis=0) if steps >= start else rows[0]
    compare(weights.weights, average, f"final weights (mean of steps {start}..{steps})")
    return Verification(method, steps, worst[0], worst[1], compared, first)


def _step_key(entry: dict) -> int:
    step = entry.get("step") if isinstance(entry, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def verify_file(path, tolerance: float = TOLERANCE) -> str:
    """One line saying the weights follow from the replay; MixweightError (one line) when they do not."""
    if not (tolerance >= 0):
        raise MixweightError(f"weights verify: --tolerance must be >= 0, got {tolerance}")
    where = f"weights file {shown(path)}"
    weights = load_domain_weights(path)
    if weights.method.get("name") == "regmix":
        return _verify_regmix(weights, path, where, tolerance)
    if weights.method.get("name") in ("online:odm", "online:doremi"):
        from mixweight.domain.online_verify import verify_online

        return verify_online(weights, path, where, tolerance)
    result = verify_weights(weights, where, tolerance)
    if result.first is not None:
        raise MixweightError(
            f"{where}: does not replay: first deviation above the tolerance {tolerance:g} at {result.first[1]} "
            f"({result.first[0]:.3g}); largest deviation {result.max_deviation:.3g} at {result.where}; "
            f"the file was edited or does not come from this {result.method} run"
        )
    return (
        f"{shown(path)}: replayed {result.steps} {result.method} steps; {result.compared} recorded weight vectors "
        f"match, largest deviation {result.max_deviation:.3g} (at {result.where}) <= {tolerance:g}"
    )


def _verify_regmix(weights: DomainWeights, path, where: str, tolerance: float) -> str:
    """A regmix artifact has no per-step update to replay: its swarm table is refitted and re-optimised instead."""
    from mixweight.domain.regmix_run import replay_weights

    expected = np.asarray(replay_weights(weights, where), dtype=np.float64)
    gaps = np.abs(np.asarray(weights.weights, dtype=np.float64) - expected)
    i = int(gaps.argmax())
    runs, regressor = len(weights.method.get("swarm", [])), weights.method.get("fit", {}).get("regressor")
    if gaps[i] > tolerance:
        raise MixweightError(
            f"{where}: does not replay: refitting its {runs} swarm runs ({regressor}) gives weight {expected[i]:.6g} "
            f"for domain '{shown(weights.domains[i])}', the file says {weights.weights[i]:.6g} (deviation "
            f"{gaps[i]:.3g} > {tolerance:g}); the file was edited or does not come from this regmix run"
        )
    return (
        f"{shown(path)}: refitted {runs} regmix swarm runs ({regressor}); the recorded weights match, largest "
        f"deviation {gaps[i]:.3g} (domain '{shown(weights.domains[i])}') <= {tolerance:g}"
    )
