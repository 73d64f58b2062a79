"""What each arm cost in training FLOPs (docs/algorithms.md section 7): its main run (eval.json's `compute`),
its weights stage, and the compute it needed to reach the baseline's final loss.

    weights stage   a weights file's `compute.flops` (DoReMi: reference + proxy, DoGE: proxy, RegMix: the swarm);
                    online DoReMi: its reference run's FLOPs; uniform, natural, online ODM: 0. Arms that share
                    a weights file are each charged all of it (each arm is the whole recipe a user would run).
    total           main run + weights stage (mean over the arm's seeds)
    to baseline     weights stage + steps to the baseline's loss x the run's FLOPs per step, per paired seed,
                    with the t interval of those steps (report/paired.py)

A run of an older mixweight has no compute record: its FLOPs, and every total made from them, are None.
Pure functions over `Run`/`Arm`; no formatting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixweight.core.artifact import load_domain_weights
from mixweight.errors import MixweightError
from mixweight.report.paired import t_interval
from mixweight.report.runs import Arm, Run
from mixweight.train.compute import COMPUTE_KEY

NO_WEIGHTS_STAGE = ("natural", "uniform", "online:odm")


def _eval_compute(run_dir) -> dict | None:
    try:
        record = json.loads((Path(run_dir) / "eval.json").read_text()).get(COMPUTE_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def weights_stage(run: Run) -> tuple[float | None, str]:
    """(FLOPs of what made the run's domain weights, where that number comes from)."""
    spec = str(run.config.get("domain_weights", "natural"))
    if spec in NO_WEIGHTS_STAGE:
        return 0.0, "none"
    if spec == "online:doremi":
        reference = ((run.config.get("mixing") or {}).get("doremi") or {}).get("reference")
        record = _eval_compute(reference) if reference else None
        return (record.get("flops") if record else None), "reference run"
    try:
        weights = load_domain_weights(spec)
    except MixweightError:  # a schedule file, or a file no longer there
        return None, spec
    return weights.compute.get("flops"), weights.method.get("name") or Path(spec).stem


def _mean(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def arm_cost(arm: Arm, steps_to_baseline: dict | None) -> dict:
    """An arm's FLOPs: main run, weights stage, total; and the compute to reach the baseline's loss (mean and
    interval over paired seeds) when `steps_to_baseline` (report/paired.py's entry) is given."""
    records = [r.final.get(COMPUTE_KEY) if isinstance(r.final.get(COMPUTE_KEY), dict) else None for r in arm.runs]
    main = _mean([rec.get("flops") if rec else None for rec in records])
    per_step = _mean([rec.get("flops_per_step") if rec else None for rec in records])
    model_per_step = _mean([rec.get("model_flops_per_step") if rec else None for rec in records])
    stages = [weights_stage(r) for r in arm.runs]
    weights = _mean([flops for flops, _ in stages])
    out = {
        "main_flops": main,
        "flops_per_step": per_step,
        "extra_fraction": None if per_step is None or not model_per_step else per_step / model_per_step - 1.0,
        "weights_flops": weights,
        "weights_source": sorted({source for _, source in stages}),
        "total_flops": None if main is None or weights is None else main + weights,
        "to_baseline": None,
    }
    if steps_to_baseline is not None and per_step is not None and weights is not None:
        per_seed = [None if s is None else weights + s * per_step for s in steps_to_baseline["per_seed"]]
        reached = [c for c in per_seed if c is not None]
        entry = {"per_seed": per_seed, "mean": float(np.mean(reached)) if reached else None, "low": None, "high": None}
        if len(reached) == len(per_seed) and len(reached) >= 2:
            entry["mean"], entry["low"], entry["high"] = t_interval(reached)
        out["to_baseline"] = entry
    return out


def costs(arms: list[Arm], baseline: str, paired: dict[str, dict]) -> dict[str, dict]:
    """Every arm's cost; the baseline reaches its own loss at its total."""
    out = {}
    for arm in arms:
        steps = (paired.get(arm.name) or {}).get("steps_to_baseline")
        out[arm.name] = arm_cost(arm, steps)
        if arm.name == baseline and out[arm.name]["total_flops"] is not None:
            total = out[arm.name]["total_flops"]
            out[arm.name]["to_baseline"] = {"per_seed": None, "mean": total, "low": None, "high": None}
    return out


def loss_against_flops(curve: dict, cost: dict) -> dict | None:
    """The arm's mean average validation loss at each evaluation against its total FLOPs by then
    (weights stage + step x FLOPs per step); None without a compute record."""
    if cost["flops_per_step"] is None or cost["weights_flops"] is None:
        return None
    flops = [cost["weights_flops"] + step * cost["flops_per_step"] for step in curve["steps"]]
    return {"flops": flops, "average_loss": list(curve["average_loss"]["mean"])}
