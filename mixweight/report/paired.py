"""Each arm against the baseline, seed by seed (docs/algorithms.md section 8).

An arm's run is paired with the baseline's run of the same seed: both start from the same model
initialization and, when their mixtures are the same, see the same batches in the same order, so
their difference removes most of what a seed changes. For every arm and seed:

    d_s = final validation loss of the arm's run - the baseline's run        (the average, and each domain)

    n >= 3 paired seeds: mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n)          (scipy.stats.t)
    n <  3 paired seeds: a paired bootstrap over seeds x validation blocks: seeds drawn with replacement,
                         then, in each drawn seed, each domain's validation blocks drawn with replacement
                         (the same blocks for the arm and the baseline), the mean difference recomputed;
                         the 2.5% and 97.5% quantiles of BOOTSTRAP_RESAMPLES draws (numpy's Generator,
                         seeded: the same runs give the same interval). Needs eval.json's per-block losses.
    verdict: "better" when the interval lies below 0 (a lower loss), "worse" when above, else
             "not distinguishable".

Steps to the baseline's loss, paired: seed s's steps for the arm to reach the baseline's seed-s final
average loss; a t interval over the seeds when at least two seeds reach it and every seed does.
Pure functions over `Run`/`Arm`; no formatting, no files.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from mixweight.report.runs import Arm, Run
from mixweight.report.stats import steps_to_target

CONFIDENCE = 0.95
MIN_T_SEEDS = 3  # below this, the t interval of the final losses gives way to the bootstrap over validation blocks
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0
BETTER, WORSE, UNCLEAR = "better", "worse", "not distinguishable"


def verdict(low: float | None, high: float | None) -> str | None:
    """Lower loss is better: the whole interval below 0 is better, above 0 worse."""
    if low is None or high is None:
        return None
    return BETTER if high < 0 else WORSE if low > 0 else UNCLEAR


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean of `values` by Student's t; no interval for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_runs(arm: Arm, baseline: Arm) -> list[tuple[object, Run, Run]]:
    """(seed, the arm's run, the baseline's run) for every seed both have, in seed order (first run of a seed)."""
    base = {}
    for run in baseline.runs:
        base.setdefault(run.seed, run)
    mine = {}
    for run in arm.runs:
        mine.setdefault(run.seed, run)
    return [(seed, mine[seed], base[seed]) for seed in sorted(mine, key=_seed_order) if seed in base]


def _seed_order(seed) -> tuple:
    """Integer seeds in numeric order, anything else after them by its text."""
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _block_differences(pairs, domains: list[str]) -> list[list[np.ndarray]] | None:
    """Per pair and domain, the arm's block losses minus the baseline's (None when a run lacks them or their
    blocks differ: a run of an older mixweight, or another eval_blocks)."""
    out = []
    for _, run, base in pairs:
        rows = []
        for d in domains:
            mine, theirs = run.final["domains"][d].get("block_losses"), base.final["domains"][d].get("block_losses")
            if not isinstance(mine, list) or not isinstance(theirs, list) or len(mine) != len(theirs) or not mine:
                return None
            rows.append(np.asarray(mine, dtype=np.float64) - np.asarray(theirs, dtype=np.float64))
        out.append(rows)
    return out


def bootstrap_intervals(
    differences: list[list[np.ndarray]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Percentile intervals of the mean paired difference per domain and of their uniform average, resampling
    seeds, then each domain's blocks within each drawn seed. `differences[s][d]`: seed s's block differences."""
    rng = np.random.default_rng(seed)
    n, k = len(differences), len(differences[0])
    drawn_seeds = rng.integers(0, n, size=(resamples, n))
    per_domain = np.empty((resamples, k))
    for d in range(k):
        blocks = np.stack([differences[s][d] for s in range(n)])  # [n, m]: every seed has the same blocks
        m = blocks.shape[1]
        picks = rng.integers(0, m, size=(resamples, n, m))
        means = np.take_along_axis(blocks[drawn_seeds], picks, axis=2).mean(axis=2)  # [resamples, n]
        per_domain[:, d] = means.mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    bounds = np.percentile(per_domain, [tail, 100 - tail], axis=0)
    average = np.percentile(per_domain.mean(axis=1), [tail, 100 - tail])
    return [(float(lo), float(hi)) for lo, hi in bounds.T], (float(average[0]), float(average[1]))


def _difference(values: list[float], interval: tuple[float | None, float | None]) -> dict:
    low, high = interval
    return {"mean": float(np.mean(values)), "low": low, "high": high, "per_seed": values, "verdict": verdict(low, high)}


def _steps_to_baseline(pairs) -> dict:
    per_seed = []
    for _, run, base in pairs:
        curve = run.eval_records()
        target = base.final["average_loss"]
        per_seed.append(steps_to_target([s for s, _ in curve], [e["average_loss"] for _, e in curve], target))
    reached = [s for s in per_seed if s is not None]
    entry = {"per_seed": per_seed, "reached": len(reached), "mean": None, "low": None, "high": None}
    if reached:
        entry["mean"] = float(np.mean(reached))
    if len(reached) == len(per_seed) and len(reached) >= 2:
        entry["mean"], entry["low"], entry["high"] = t_interval(reached)
    return entry


def paired_comparison(arm: Arm, baseline: Arm, domains: list[str]) -> dict:
    """The arm against the baseline: paired differences with intervals and verdicts, steps to the baseline's loss."""
    pairs = paired_runs(arm, baseline)
    seeds = [seed for seed, _, _ in pairs]
    out = {
        "seeds": seeds,
        "unpaired_seeds": sorted({r.seed for r in arm.runs} - set(seeds), key=_seed_order),
        "confidence": CONFIDENCE,
        "method": None,
        "note": None,
    }
    if not pairs:
        out["note"] = f"no seed in common with the baseline '{baseline.name}'"
        return out
    average = [run.final["average_loss"] - base.final["average_loss"] for _, run, base in pairs]
    by_domain = {
        d: [run.final["domains"][d]["loss"] - base.final["domains"][d]["loss"] for _, run, base in pairs]
        for d in domains
    }
    none = (None, None)
    if len(pairs) >= MIN_T_SEEDS:
        out["method"] = "t over seeds"
        average_interval = t_interval(average)[1:]
        domain_intervals = {d: t_interval(v)[1:] for d, v in by_domain.items()}
    else:
        differences = _block_differences(pairs, domains)
        if differences is None:
            out["note"] = (
                f"{len(pairs)} paired seed(s) and no per-block validation losses in eval.json (a run of an older "
                "mixweight: `mixweight eval RUN` records them), so no interval"
            )
            average_interval, domain_intervals = none, {d: none for d in domains}
        else:
            out["method"] = "bootstrap over seeds x validation blocks"
            out["note"] = (
                f"{len(pairs)} paired seed(s): the interval covers the validation sample's noise and the seeds' "
                "spread only as far as these seeds show it; 3 or more seeds give the t interval over seeds"
            )
            intervals, average_interval = bootstrap_intervals(differences)
            domain_intervals = dict(zip(domains, intervals))
    out["average"] = _difference(average, average_interval)
    out["domains"] = {d: _difference(v, domain_intervals[d]) for d, v in by_domain.items()}
    out["steps_to_baseline"] = _steps_to_baseline(pairs)
    return out


def paired_comparisons(arms: list[Arm], baseline: str, domains: list[str]) -> dict[str, dict]:
    """Every arm but the baseline against it."""
    base = next(a for a in arms if a.name == baseline)
    return {a.name: paired_comparison(a, base, domains) for a in arms if a.name != baseline}
