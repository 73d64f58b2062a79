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


# --- a method's own figure, next to its weights ----------------------------------------------------------
def method_figure(out_dir, name: str, method: dict) -> tuple[str, str, str, str] | None:
    """(figure key, file, heading, caption) of the figure the weights method of `method` (a weights file's record)
    draws for the report, e.g. `regmix_fit_<name>.png`; None when the method has none or nothing to draw."""
    import re
    from pathlib import Path

    from mixweight.domain.methods import methods

    entry = methods().get(method.get("name")) if isinstance(method.get("name"), str) else None
    if entry is None or entry.report_figure is None:
        return None
    key = f"{entry.name}_fit"
    file = f"{key}_{re.sub(r'[^A-Za-z0-9_+-]', '_', name)}.png"
    drawn = entry.report_figure(method, Path(out_dir) / file, name)
    return None if drawn is None else (key, file, *drawn)
