"""Markdown tables of a comparison. Inputs are the dicts built by `stats.py`; the best value of
each column is in bold (lowest loss / perplexity / gap / steps, highest speedup)."""

from __future__ import annotations

import math

LOSS_DECIMALS = 4
PPL_DECIMALS = 3
WEIGHT_DECIMALS = 3
TIE = 1e-12


def fmt(value: float | None, decimals: int = LOSS_DECIMALS) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def fmt_stat(stat: dict, decimals: int = LOSS_DECIMALS) -> str:
    """`mean` for one seed, `mean ± std` for several."""
    text = fmt(stat["mean"], decimals)
    return f"{text} ± {fmt(stat['std'], decimals)}" if stat["n"] > 1 else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _bold_best(texts: list[str], values: list[float | None], lower_is_better: bool = True) -> list[str]:
    known = [v for v in values if v is not None and math.isfinite(v)]
    if len(known) < 2:
        return texts
    best = min(known) if lower_is_better else max(known)
    return [
        f"**{t}**" if v is not None and math.isfinite(v) and abs(v - best) <= TIE else t for t, v in zip(texts, values)
    ]


def _columns_to_rows(columns: list[list[str]]) -> list[list[str]]:
    return [list(row) for row in zip(*columns)]


def results_table(finals: dict[str, dict], domains: list[str], metric: str = "loss") -> str:
    """The LinUpper paper's Table 1 layout: rows arms, columns domains + uniform average + worst domain."""
    decimals = LOSS_DECIMALS if metric == "loss" else PPL_DECIMALS
    arms = list(finals)
    columns = [arms]
    for d in domains:
        stats = [finals[a]["domains"][d][metric] for a in arms]
        columns.append(_bold_best([fmt_stat(s, decimals) for s in stats], [s["mean"] for s in stats]))
    average = [finals[a][f"average_{metric}"] for a in arms]
    columns.append(_bold_best([fmt_stat(s, decimals) for s in average], [s["mean"] for s in average]))
    if metric == "loss":
        worst = [finals[a]["worst_loss"] for a in arms]
        texts = [f"{fmt_stat(s)} ({', '.join(sorted(set(finals[a]['worst_domains'])))})" for s, a in zip(worst, arms)]
        columns.append(_bold_best(texts, [s["mean"] for s in worst]))
    header = ["arm", *domains, "average"] + (["worst domain"] if metric == "loss" else [])
    return table(header, _columns_to_rows(columns))


def gap_table(finals: dict[str, dict], domains: list[str], irreducible: dict[str, float | None]) -> str:
    """Gap of each domain's final validation loss to its irreducible loss (lower is better)."""
    shown = [d for d in domains if all("gap_to_irreducible" in finals[a]["domains"][d] for a in finals)]
    arms = list(finals)
    columns = [arms]
    for d in shown:
        stats = [finals[a]["domains"][d]["gap_to_irreducible"] for a in arms]
        columns.append(_bold_best([fmt_stat(s) for s in stats], [s["mean"] for s in stats]))
    means = [sum(finals[a]["domains"][d]["gap_to_irreducible"]["mean"] for d in shown) / len(shown) for a in arms]
    columns.append(_bold_best([fmt(m) for m in means], means))
    header = ["arm", *[f"{d} (irr. {fmt(irreducible.get(d))})" for d in shown], "average gap"]
    return table(header, _columns_to_rows(columns))


def speedup_table(speed: dict) -> str:
    rows_steps, rows_ratio, names, seeds = [], [], [], []
    for name, entry in speed["arms"].items():
        names.append(name)
        rows_steps.append(entry["steps"])
        rows_ratio.append(entry["ratio"])
        seeds.append(", ".join("not reached" if s is None else fmt(s, 1) for s in entry["per_seed_steps"]))
    steps_text = _bold_best(["not reached" if s is None else fmt(s, 1) for s in rows_steps], rows_steps)
    ratio_text = _bold_best(
        ["n/a" if r is None else f"{r:.3f}x" for r in rows_ratio], rows_ratio, lower_is_better=False
    )
    return table(
        ["arm", "steps to target", f"{speed['baseline']}_steps / arm_steps", "per seed"],
        _columns_to_rows([names, steps_text, ratio_text, seeds]),
    )


def weights_table(mixtures: dict[str, dict], domains: list[str]) -> str:
    rows = [
        [
            d,
            *[
                "held out" if d in m.get("held_out", ()) else fmt(m["weights"][d], WEIGHT_DECIMALS)
                for m in mixtures.values()
            ],
        ]
        for d in domains
    ]
    return table(["domain", *mixtures], rows)


def diagnostics_table(diagnostics: dict[str, dict]) -> str:
    rows = [
        [
            arm,
            ", ".join(d["sample_weighting"]),
            fmt(d["mean_max_weight_x_n"]),
            fmt(d["max_max_weight_x_n"]),
            fmt(d["mean_ess_fraction"]),
            f"{100 * d['fraction_steps_above_2']:.1f}%",
            str(d["logged_steps"]),
        ]
        for arm, d in diagnostics.items()
    ]
    return table(
        ["arm", "weighting", "mean max w×N", "max max w×N", "mean ESS/N", "steps with max w×N > 2", "logged steps"],
        rows,
    )


def arms_table(arms_info: dict[str, dict]) -> str:
    rows = [
        [
            name,
            str(len(info["runs"])),
            ", ".join(map(str, info["seeds"])),
            ", ".join(map(str, sorted(set(info["steps"])))),
            info["model"],
            info["domain_weights"],
            info["sample_weighting"],
            ", ".join(info["runs"]),
        ]
        for name, info in arms_info.items()
    ]
    return table(["arm", "runs", "seeds", "steps", "model", "domain weights", "sample weighting", "run dirs"], rows)


def downstream_table(downstream: dict[str, dict[str, dict]]) -> str:
    """Rows arms, columns tasks (the LinUpper paper's Tables 2 and 3): few-shot accuracy, best in bold."""
    tasks = sorted({t for per_task in downstream.values() for t in per_task})
    arms = list(downstream)
    rows = [[arm] for arm in arms]
    for task in tasks:
        stats = [downstream[arm].get(task) for arm in arms]
        best = max((s["mean"] for s in stats if s), default=None)
        for row, stat in zip(rows, stats):
            cell = "n/a" if stat is None else fmt_stat(stat, 4)
            row.append(f"**{cell}**" if stat and stat["mean"] == best and len(arms) > 1 else cell)
    return table(["arm", *tasks], rows)


def fmt_diff(value: float | None, decimals: int = LOSS_DECIMALS) -> str:
    return "n/a" if value is None else f"{value:+.{decimals}f}"


def fmt_interval(entry: dict, decimals: int = LOSS_DECIMALS, signed: bool = True) -> str:
    """`mean [low, high]`, or the mean alone when there is no interval."""
    show = fmt_diff if signed else fmt
    text = show(entry.get("mean"), decimals)
    if entry.get("low") is None or entry.get("high") is None:
        return text
    return f"{text} [{show(entry['low'], decimals)}, {show(entry['high'], decimals)}]"


def fmt_flops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def paired_table(paired: dict[str, dict], speed_baseline: str) -> str:
    """Per arm: seeds paired, the interval's method, the difference of the average loss with its interval and the
    verdict, and the paired steps to the baseline's loss."""
    rows = []
    for arm, entry in paired.items():
        if "average" not in entry:
            rows.append([arm, "0", "n/a", "n/a", "n/a", entry.get("note") or ""])
            continue
        steps = entry["steps_to_baseline"]
        reached = f"{steps['reached']}/{len(steps['per_seed'])} seeds"
        steps_text = "not reached" if steps["mean"] is None else f"{fmt_interval(steps, 1, signed=False)} ({reached})"
        rows.append(
            [
                arm,
                str(len(entry["seeds"])),
                entry["method"] or "none",
                fmt_interval(entry["average"]),
                f"**{entry['average']['verdict']}**" if entry["average"]["verdict"] else "n/a",
                steps_text,
            ]
        )
    header = [
        "arm",
        "paired seeds",
        "interval",
        "Δ average loss [95% CI]",
        "verdict",
        f"steps to {speed_baseline}'s loss",
    ]
    return table(header, rows)


def paired_domains_table(paired: dict[str, dict], domains: list[str]) -> str:
    """Per arm and domain: the paired difference and its interval; ↓ better, ↑ worse (the interval excludes 0)."""
    marks = {"better": " ↓", "worse": " ↑"}
    rows = [
        [arm, *[fmt_interval(e["domains"][d]) + marks.get(e["domains"][d]["verdict"], "") for d in domains]]
        for arm, e in paired.items()
        if "domains" in e
    ]
    return table(["arm", *domains], rows)


def cost_table(costs: dict[str, dict], baseline: str) -> str:
    """Per arm: FLOPs of the main run and of its weights stage, their total, the step's extra work, and the compute
    to reach the baseline's final loss (weights stage included) with its interval."""
    base_total = costs.get(baseline, {}).get("total_flops")
    rows = []
    for arm, c in costs.items():
        reach = c["to_baseline"]
        reach_text = "n/a" if reach is None else "not reached"  # n/a: no compute record to count with
        if reach and reach["mean"] is not None:
            interval = f" [{fmt_flops(reach['low'])}, {fmt_flops(reach['high'])}]" if reach["low"] is not None else ""
            ratio = f" ({base_total / reach['mean']:.2f}x)" if base_total else ""
            reach_text = f"{fmt_flops(reach['mean'])}{interval}{ratio}"
        extra = c["extra_fraction"]
        rows.append(
            [
                arm,
                fmt_flops(c["main_flops"]),
                "n/a" if extra is None else f"+{100 * extra:.1f}%",
                fmt_flops(c["weights_flops"])
                + ("" if c["weights_flops"] == 0 else f" ({', '.join(c['weights_source'])})"),
                fmt_flops(c["total_flops"]),
                reach_text,
            ]
        )
    header = ["arm", "main run", "step's extra work", "weights stage", "total", f"to reach {baseline}'s loss"]
    return table(header, rows)


def clusters_table(clusters: dict[str, dict], domains: list[str]) -> str:
    """A clustered corpus's domains (manifest.json `clustering`): name, documents, share, description."""
    rows = [
        [f"`{d}`", str(c["documents"]), f"{100 * c['share']:.1f}%", _cell(c["description"])]
        for d in domains
        if (c := clusters.get(d)) is not None
    ]
    return table(["domain", "documents", "share", "description"], rows)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (no pipes, no line breaks)."""
    return " ".join(text.split()).replace("|", "\\|")
