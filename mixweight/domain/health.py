"""Weights that collapse say so: near one-hot, stuck at the smoothing floor, still moving at the end.

`weight_warnings(trajectory_weights, domains, floor)` reads a per-step trajectory (a numpy
array [T + 1, k]; row t holds the weights after step t, row 0 the initial weights) and
returns a list of warnings, each ``{"code", "step", "domains", "message"}``:

- ``one-hot``: some domain holds more than ONE_HOT_MAX (0.9) of the weight; the step is the
  first at which it happened;
- ``low-entropy``: the entropy of the weights falls below ENTROPY_FLOOR (0.3) of its maximum
  log(k) (and no one-hot warning already says so): most domains are starved;
- ``at-floor``: a domain stays within FLOOR_FACTOR x the smoothing floor (c/k) for the whole
  last FLOOR_TAIL (20%) of the steps; the step is where that final stretch began;
- ``not-converged``: the L1 change of the weights over the last MOVING_TAIL (10%) of the steps
  exceeds MOVING_L1 (0.05): the average is not a settled answer (checked from MIN_STEPS steps).

Both weights commands record these in the artifact (``warnings``) and print them; the report
shows them next to the weights. The remedies in every message are the usual ones: a smaller
step size (DoReMi's eta, DoGE's mu), a larger batch so every domain is in every step, more steps.
"""

from __future__ import annotations

import math

import numpy as np

ONE_HOT_MAX = 0.9
ENTROPY_FLOOR = 0.3  # fraction of log(k)
FLOOR_FACTOR = 2.0  # "at the floor": weight < FLOOR_FACTOR * floor (the softmax part is below the floor itself)
FLOOR_TAIL = 0.2
MOVING_TAIL = 0.1
MOVING_L1 = 0.05
MIN_STEPS = 10  # below this, "still moving at the end" is just the start
REMEDIES = (
    "usual remedies: a smaller step size (DoReMi --eta, DoGE --mu), a larger batch (--batch-size or "
    "--grad-accum) so every domain is in every step, more --steps"
)


def _warning(code: str, step: int, domains: list[str], message: str) -> dict:
    return {"code": code, "step": int(step), "domains": list(domains), "message": f"{message}; {REMEDIES}"}


def weight_warnings(trajectory_weights, domains: list[str], floor: float | None = None) -> list[dict]:
    """Warnings about a per-step trajectory [T + 1, k] (see the module docstring); [] when healthy."""
    w = np.asarray(trajectory_weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != len(domains) or len(w) == 0:
        raise ValueError(f"weight_warnings: expected [steps + 1, {len(domains)}] weights, got shape {w.shape}")
    k, last = len(domains), len(w) - 1
    found = []
    peaks = np.flatnonzero(w.max(axis=1) > ONE_HOT_MAX)
    if peaks.size:
        step = int(peaks[0])
        top = domains[int(w[step].argmax())]
        found.append(
            _warning(
                "one-hot",
                step,
                [top],
                (
                    f"weights near one-hot: '{top}' holds {w[step].max():.3f} (> {ONE_HOT_MAX}) from step {step}"
                    f" (at the end: {w[last].max():.3f} on '{domains[int(w[last].argmax())]}')"
                ),
            )
        )
    elif k > 1:
        entropy = -(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)).sum(axis=1) / math.log(k)
        low = np.flatnonzero(entropy < ENTROPY_FLOOR)
        if low.size:
            step = int(low[0])
            heavy = [domains[i] for i in np.argsort(-w[step])[:2]]
            found.append(
                _warning(
                    "low-entropy",
                    step,
                    heavy,
                    (
                        f"weights collapsing: entropy {entropy[step]:.2f} of its maximum log({k}) (< {ENTROPY_FLOOR}) "
                        f"from step {step}, mostly on {heavy}"
                    ),
                )
            )
    if floor is not None and last >= 1:
        tail_start = max(1, last - max(1, math.ceil(FLOOR_TAIL * last)) + 1)
        threshold = max(FLOOR_FACTOR * floor, 1e-6)
        low = w < threshold
        stuck = [i for i in range(k) if low[tail_start:, i].all()]
        if stuck:
            # where each stuck domain's final stretch at the floor began; report the earliest
            begins = [int(np.flatnonzero(~low[:, i])[-1]) + 1 if (~low[:, i]).any() else 0 for i in stuck]
            names = [domains[i] for i in stuck]
            found.append(
                _warning(
                    "at-floor",
                    min(begins),
                    names,
                    (
                        f"domain(s) {names} stuck at the smoothing floor ({floor:.3g}) "
                        f"from step {min(begins)} to the end "
                        f"(step {last}): they get no say in the average"
                    ),
                )
            )
    if last >= MIN_STEPS:
        start = last - max(1, math.ceil(MOVING_TAIL * last))
        change = np.abs(w[last] - w[start]).sum()
        if change > MOVING_L1:
            moving = [domains[i] for i in np.argsort(-np.abs(w[last] - w[start]))[:2]]
            found.append(
                _warning(
                    "not-converged",
                    start,
                    moving,
                    (
                        f"weights still moving at the end: L1 change {change:.3f} (> {MOVING_L1}) from step {start} "
                        f"to step {last}, most in {moving}"
                    ),
                )
            )
    return found


def format_warning(warning: dict) -> str:
    """One line for a terminal or a report: the code and the message."""
    return f"[{warning.get('code')}] {warning.get('message')}"
