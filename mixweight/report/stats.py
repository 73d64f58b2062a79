"""The numbers of a comparison: seed aggregates, validation curves, steps to a target loss,
sample-weight diagnostics. Plain functions over `Run`/`Arm`; no formatting, no files.

Seeds aggregate as mean and sample standard deviation (ddof=1; 0 for a single seed).
"""

from __future__ import annotations

import json
import math

import numpy as np

from mixweight.report.runs import Arm

UNIFORM_WEIGHT_TOL = 1e-6  # |max_weight_x_n - 1| below this on every step: the plain mean loss


def mean_std(values) -> dict:
    values = [float(v) for v in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values), "values": values}


def final_summary(arm: Arm, domains: list[str], irreducible: dict[str, float | None]) -> dict:
    """Per-domain loss/perplexity(/gap to irreducible), uniform average and worst domain, over seeds."""
    out = {"domains": {}}
    for d in domains:
        stats = [r.final["domains"][d] for r in arm.runs]
        entry = {
            "loss": mean_std(s["loss"] for s in stats),
            "perplexity": mean_std(s.get("perplexity", math.exp(min(s["loss"], 700.0))) for s in stats),
        }
        gaps = [s.get("gap_to_irreducible") for s in stats]
        if irreducible.get(d) is not None:
            gaps = [g if g is not None else s["loss"] - irreducible[d] for g, s in zip(gaps, stats)]
        if all(g is not None for g in gaps):
            entry["gap_to_irreducible"] = mean_std(gaps)
        out["domains"][d] = entry
    finals = [r.final for r in arm.runs]
    out["average_loss"] = mean_std(f["average_loss"] for f in finals)
    out["average_perplexity"] = mean_std(
        f.get("average_perplexity", math.exp(min(f["average_loss"], 700.0))) for f in finals
    )
    out["worst_loss"] = mean_std(f["worst_loss"] for f in finals)
    out["worst_domains"] = [f["worst_domain"] for f in finals]
    out["steps"] = [f.get("step") for f in finals]
    return out


def eval_curves(arm: Arm, domains: list[str]) -> dict:
    """Validation curves averaged over seeds, at the eval steps every seed has."""
    per_run = [dict(r.eval_records()) for r in arm.runs]
    steps = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []

    def series(get) -> dict:
        rows = np.array([[get(c[s]) for s in steps] for c in per_run], dtype=float).reshape(len(per_run), len(steps))
        std = rows.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros(len(steps))
        return {"mean": rows.mean(axis=0).tolist() if steps else [], "std": std.tolist()}

    return {
        "steps": steps,
        "average_loss": series(lambda e: e["average_loss"]),
        "domains": {d: series(lambda e, d=d: e["domains"][d]["loss"]) for d in domains},
        "per_seed_average_loss": [[c[s]["average_loss"] for s in sorted(c)] for c in per_run],
        "per_seed_steps": [sorted(c) for c in per_run],
    }


def steps_to_target(steps: list[float], values: list[float], target: float) -> float | None:
    """First step at which `values` reaches `target` (<=), linearly interpolated between evals.

    None when it never does. When the first eval is already at or below the target, its step
    (the loss before it is unknown).
    """
    for i, (step, value) in enumerate(zip(steps, values)):
        if value <= target:
            if i == 0:
                return float(step)
            prev_step, prev_value = steps[i - 1], values[i - 1]
            return float(prev_step + (prev_value - target) / (prev_value - value) * (step - prev_step))
    return None


def speedups(curves: dict[str, dict], finals: dict[str, dict], baseline: str) -> dict:
    """DoReMi's measure: steps each arm needs to reach the baseline's final average validation
    loss, and baseline_steps / arm_steps ("x fewer steps")."""
    target = finals[baseline]["average_loss"]["mean"]
    out = {"baseline": baseline, "target_average_loss": target, "arms": {}}
    for name, curve in curves.items():
        steps = steps_to_target(curve["steps"], curve["average_loss"]["mean"], target)
        per_seed = [
            steps_to_target(s, v, target) for s, v in zip(curve["per_seed_steps"], curve["per_seed_average_loss"])
        ]
        out["arms"][name] = {"steps": steps, "per_seed_steps": per_seed}
    base = out["arms"][baseline]["steps"]
    out["baseline_steps"] = base
    for entry in out["arms"].values():
        entry["ratio"] = base / entry["steps"] if base is not None and entry["steps"] else None
    return out


def _weighting_name(config: dict) -> str:
    return str((config.get("sample_weighting") or {}).get("name", "none"))


def sample_weight_diagnostics(arm: Arm) -> dict | None:
    """max_weight_x_n and effective sample size over training; None for an arm on the plain mean."""
    per_run = []
    for run in arm.runs:
        records = run.step_records()
        steps = [r["step"] for r in records]
        max_w = [r["weights"]["max_weight_x_n"] for r in records]
        ess = [r["weights"]["ess_fraction"] for r in records]
        per_run.append((steps, max_w, ess))
    configured = any(_weighting_name(r.config) != "none" for r in arm.runs)
    nonuniform = any(abs(v - 1.0) > UNIFORM_WEIGHT_TOL for _, max_w, _ in per_run for v in max_w)
    if not (configured or nonuniform) or not any(steps for steps, _, _ in per_run):
        return None
    all_max = [v for _, max_w, _ in per_run for v in max_w]
    all_ess = [v for _, _, ess in per_run for v in ess]
    common = sorted(set.intersection(*(set(s) for s, _, _ in per_run)))

    def mean_series(index: int) -> list[float]:
        lookups = [dict(zip(run[0], run[index])) for run in per_run]
        return [float(np.mean([lk[s] for lk in lookups])) for s in common]

    return {
        "sample_weighting": sorted({_weighting_name(r.config) for r in arm.runs}),
        "mean_max_weight_x_n": float(np.mean(all_max)),
        "max_max_weight_x_n": float(np.max(all_max)),
        "mean_ess_fraction": float(np.mean(all_ess)),
        "fraction_steps_above_2": float(np.mean([v > 2.0 for v in all_max])),
        "logged_steps": len(all_max),
        "curve": {"steps": common, "max_weight_x_n": mean_series(1), "ess_fraction": mean_series(2)},
    }


DOWNSTREAM_FILE = "lm_eval.json"  # written into a run directory by the pipeline's downstream stage


def downstream_summary(arm: Arm) -> dict[str, dict] | None:
    """Few-shot accuracy per task (mean ± std over the arm's seeds), or None if no run was evaluated."""
    per_task: dict[str, list[float]] = {}
    for run in arm.runs:
        path = run.path / DOWNSTREAM_FILE
        if path.is_file():
            for task, result in json.loads(path.read_text()).items():
                if result.get("acc") is not None:
                    per_task.setdefault(task, []).append(result["acc"])
    return {task: mean_std(values) for task, values in per_task.items()} or None
