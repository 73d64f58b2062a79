"""How often each arm's run repeats each domain: the planned epochs from every run's `RUN/repetition.json`.

A training run records, before it starts, each domain's planned epochs over the run (the sum over
its mixture phases of w_d x the phase's tokens / tokens_d) and, with `--max-epochs`, what the cap
moved (mixweight.sampling.repetition). The report shows them per arm (mean over seeds), so a
mixture that reads a small domain many times over is visible next to its losses.
"""

from __future__ import annotations

import json

from mixweight.report.runs import Arm
from mixweight.report.tables import table

REPETITION_FILE = "repetition.json"


def planned_epochs(arm: Arm, domains: list[str]) -> dict | None:
    """{"epochs": {domain: mean planned epochs over the seeds}, "max_epochs", "capped": [domains]} or None
    when no run of the arm recorded them (runs from an older mixweight)."""
    records = []
    for run in arm.runs:
        try:
            records.append(json.loads((run.path / REPETITION_FILE).read_text()))
        except (OSError, ValueError):
            continue
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("planned_epochs"), dict)]
    if not records:
        return None
    epochs = {
        d: sum(float(r["planned_epochs"].get(d, 0.0)) for r in records) / len(records)
        for d in domains
        if any(d in r["planned_epochs"] for r in records)
    }
    capped = sorted({d for r in records for p in r.get("phases") or [] for d in p.get("capped", [])})
    caps = {r.get("max_epochs") for r in records}
    return {"epochs": epochs, "max_epochs": caps.pop() if len(caps) == 1 else sorted(caps, key=str), "capped": capped}


def epochs_table(planned: dict[str, dict], domains: list[str]) -> str:
    """Rows: domains; columns: arms; a cell is the planned epochs (* where --max-epochs moved the weights)."""
    rows = []
    for d in domains:
        cells = []
        for info in planned.values():
            value = info["epochs"].get(d)
            cells.append("n/a" if value is None else f"{value:.3g}" + (" *" if d in info["capped"] else ""))
        rows.append([d, *cells])
    caps = ["none" if info["max_epochs"] is None else f"{info['max_epochs']}" for info in planned.values()]
    rows.append(["*max_epochs*", *caps])
    return table(["domain", *planned], rows)


# --- a RegMix artifact's fit, next to its weights ---------------------------------------------------------
def regmix_fit_figure(out_dir, name: str, method: dict) -> str | None:
    """`regmix_fit_<name>.png`: the swarm's held-out predicted vs observed target loss (the fit the weights
    rest on); None when `method` is not a regmix record with a fit."""
    import re
    from pathlib import Path

    from mixweight.domain.plots import plot_regmix_fit

    file = f"regmix_fit_{re.sub(r'[^A-Za-z0-9_+-]', '_', name)}.png"
    return file if plot_regmix_fit(method, Path(out_dir) / file, title=name, size=4.5) is not None else None
