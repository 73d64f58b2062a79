"""`compare_runs`: finished runs in, `report.md` + `report.json` + PNG figures out.

run dirs -> arms (seeds grouped) -> same corpus? -> final numbers, curves, steps to the
baseline's loss, each arm paired with the baseline seed by seed (intervals, verdicts: paired.py),
FLOPs (cost.py), sample-weight diagnostics, domain weights -> figures -> report.json, report.md
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from mixweight.core.config import option
from mixweight.core.jsonio import write_json_atomic, write_text_atomic
from mixweight.core.outputs import check_output_path, is_json_with
from mixweight.domain.health import format_warning
from mixweight.errors import MixweightError
from mixweight.report import cost, figures, paired, stats, tables
from mixweight.report.mixtures import collect_mixtures
from mixweight.report.repetition import epochs_table, method_figure, planned_epochs
from mixweight.report.runs import Arm, check_same_corpus, group_arms
from mixweight.weighting import default_warmup_steps

FORMAT = "mixweight-report/1"
DEFAULT_BASELINE = "uniform"


def is_report_dir(path: Path) -> bool:
    """owned(path) for --out: a directory holding a report.json that compare wrote (its format), which a new
    comparison replaces; anything else there is refused."""
    return is_json_with(path / "report.json", lambda raw: str(raw.get("format", "")).startswith("mixweight-report/"))


def _distinct(values) -> str:
    seen = list(dict.fromkeys(str(v) for v in values))
    return ", ".join(seen)


def _model_name(spec) -> str:
    spec = str(spec)
    return Path(spec).stem if spec.endswith(".json") else spec


def _weighting(config: dict) -> str:
    block = config.get("sample_weighting") or {}
    kind = str(block.get("name", "none"))
    if kind in ("none", "uniform"):
        return kind
    warmup = block.get("warmup_steps", 0)  # a config without the key is older than the curriculum default: 0
    if warmup is None:
        warmup = default_warmup_steps(int(config.get("steps") or 0))
    schedule = f", {block.get('schedule', 'step')} from r={block.get('start')} for {warmup} steps" if warmup else ""
    return f"{kind} (r={block.get('r')}{schedule})"


def _arm_info(arm: Arm) -> dict:
    configs = [r.config for r in arm.runs]
    return {
        "runs": [str(r.path) for r in arm.runs],
        "seeds": [c.get("seed") for c in configs],
        "steps": [r.final.get("step", c.get("steps")) for r, c in zip(arm.runs, configs)],
        "model": _distinct(_model_name(c.get("model")) for c in configs),
        "domain_weights": _distinct(c.get("domain_weights") for c in configs),
        "sample_weighting": _distinct(_weighting(c) for c in configs),
        "trackers": {str(r.path): r.trackers for r in arm.runs if r.trackers},
    }


def _baseline(names: list[str], baseline: str | None) -> str:
    if baseline is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in names else names[0]
    if baseline not in names:
        raise MixweightError(f"compare: baseline arm '{baseline}' is not among the arms {names}")
    return baseline


def _weight_warnings(mixtures: dict) -> list[str]:
    """The methods' own health warnings (weight_warnings), right under the weights they qualify."""
    lines = [
        f"- **{name}** {format_warning(w)} (step {w.get('step')})"
        for name, m in mixtures.items()
        for w in m.get("warnings") or []
    ]
    return ["**Warnings about these weights:**\n\n" + "\n".join(lines)] if lines else []


@dataclass
class CompareConfig:
    """`mixweight compare RUN [RUN ...] --out DIR`."""

    COMMAND: ClassVar[str] = "compare"

    runs: Optional[list[str]] = option(
        None, "run directories; runs with the same --labels entry are seeds of one arm", positional=True
    )
    out: Optional[str] = option(None, "directory for report.md, report.json and figures (required)", required=True)
    labels: Optional[str] = option(None, "comma-separated arm name per run (default: directory names)")
    weights: Optional[list[str]] = option(
        None,
        "a domain_weights.json to show, labelled METHOD (repeatable; default: the files the runs trained on)",
        repeated=True,
        metavar="METHOD=FILE",
    )
    data: Optional[str] = option(None, "corpus directory (default: the runs')")
    baseline: Optional[str] = option(None, "arm whose final loss is the target (default: uniform, else the first)")


def compare_runs(
    runs, out_dir, weights_files: dict | None = None, corpus=None, labels=None, baseline: str | None = None
) -> dict:
    """Compare finished runs; writes report.md, report.json and figures into `out_dir`.

    runs: run directories (arm = directory name, or `labels[i]`; runs sharing a label are seeds
    of one arm) or {arm name: [run dirs, one per seed]}. weights_files: {method: domain_weights.json}
    shown side by side (default: the files the runs trained on). corpus: the corpus directory,
    when the runs' configs do not point at it. baseline: the arm whose final average loss is the
    target of "steps to target" (default: `uniform` if present, else the first arm).
    Returns the report.json content.
    """
    arms = group_arms(runs, labels)
    all_runs = [r for a in arms for r in a.runs]
    manifest = check_same_corpus(all_runs, None if corpus is None else str(corpus))
    domains = list(all_runs[0].final["domains"])
    if manifest is not None and sorted(manifest.domains) == sorted(domains):
        domains = list(manifest.domains)
    irreducible = dict(manifest.irreducible_loss) if manifest is not None else {}
    names = [a.name for a in arms]
    base = _baseline(names, baseline)

    finals = {a.name: stats.final_summary(a, domains, irreducible) for a in arms}
    curves = {a.name: stats.eval_curves(a, domains) for a in arms}
    speed = stats.speedups(curves, finals, base)
    pairs = paired.paired_comparisons(arms, base, domains)  # every arm against the baseline, seed by seed
    costs = cost.costs(arms, base, pairs)
    flops_curves = {a.name: c for a in arms if (c := cost.loss_against_flops(curves[a.name], costs[a.name]))}
    diagnostics = {a.name: d for a in arms if (d := stats.sample_weight_diagnostics(a)) is not None}
    mixtures = collect_mixtures(arms, domains, manifest, weights_files)
    downstream = {a.name: d for a in arms if (d := stats.downstream_summary(a)) is not None}
    epochs = {a.name: e for a in arms if (e := planned_epochs(a, domains)) is not None}  # RUN/repetition.json

    out = Path(out_dir)
    inputs = [("run", r.path) for r in all_runs] + [("--weights", f) for f in (weights_files or {}).values()]
    check_output_path(  # as given: Path() would read a URL as a local directory
        out_dir,
        "compare --out",
        kind="dir",
        what="the report",
        owned=is_report_dir,
        inputs=[*inputs, ("--data", corpus)],
    )
    out.mkdir(parents=True, exist_ok=True)
    figs = {"validation_curves": figures.validation_curves(out, curves, domains)}
    if flops_curves:
        figs["loss_vs_flops"] = figures.loss_against_flops(out, flops_curves)
    if mixtures:
        figs["domain_weights"] = figures.domain_weights_bars(out, mixtures, domains)
    trajectories = {
        name: figures.weight_trajectory(out, name, m["trajectory"])
        for name, m in mixtures.items()
        if m["trajectory"] and m["trajectory"]["steps"] and not m.get("online")
    }
    online = {n: m for n, m in mixtures.items() if m.get("online") and m["trajectory"] and m["trajectory"]["steps"]}
    if online:  # the online arms' phases beside the offline weights
        offline = {n: m for n, m in mixtures.items() if not m.get("online")}
        figs["online_trajectories"] = figures.online_trajectories(out, online, offline, domains)
    if diagnostics:
        figs["sample_weights"] = figures.sample_weight_diagnostics(out, diagnostics)
    method_figures = {}  # a method's own figure beside its weights (regmix: the swarm's fit)
    for name, m in mixtures.items():
        drawn = method_figure(out, name, m.get("method") or {})
        if drawn is not None:
            method_figures[name] = drawn
            figs[f"{drawn[0]}:{name}"] = drawn[1]

    report = {
        "format": FORMAT,
        "std": "sample standard deviation over seeds (ddof=1); 0 for one seed",
        "corpus": {
            "path": str(corpus) if corpus is not None else all_runs[0].corpus,
            "config_hash": manifest.config_hash if manifest else None,
            "domains": domains,
            "irreducible_loss": {d: irreducible.get(d) for d in domains} if irreducible else None,
            "clusters": (manifest.clustering.get("clusters") or None) if manifest is not None else None,
        },
        "baseline": base,
        "arms": {a.name: {**_arm_info(a), "final": finals[a.name], "curve": curves[a.name]} for a in arms},
        "steps_to_target": speed,
        "paired": pairs,
        "compute": costs,
        "sample_weights": diagnostics,
        "domain_weights": mixtures,
        "downstream": downstream,
        "planned_epochs": epochs,
        "figures": {**figs, **{f"weights_trajectory:{k}": v for k, v in trajectories.items()}},
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report, figs, trajectories, method_figures))
    return report


def render_markdown(
    report: dict, figs: dict[str, str], trajectories: dict[str, str], method_figures: dict[str, tuple]
) -> str:
    arms, corpus, domains = report["arms"], report["corpus"], report["corpus"]["domains"]
    finals = {name: arm["final"] for name, arm in arms.items()}
    seeds = sum(len(arm["runs"]) for arm in arms.values())
    speed = report["steps_to_target"]
    parts = [
        "# mixweight comparison",
        f"Compared {len(arms)} arm(s) ({', '.join(arms)}) from {seeds} run(s); "
        f"model {_distinct(a['model'] for a in arms.values())}; "
        f"steps {_distinct(s for a in arms.values() for s in sorted(set(a['steps'])))}; "
        f"corpus `{corpus['path']}` (config_hash {corpus['config_hash'] or 'unknown'}, {len(domains)} domains: "
        f"{', '.join(domains)}). Baseline arm: `{report['baseline']}`. "
        "Several seeds of an arm are shown as mean ± std (sample std over seeds).",
        tables.arms_table(arms),
    ]
    if corpus.get("clusters"):
        parts += [
            "## Domains: clusters of the corpus",
            "The corpus's domains were made by clustering its documents (`data prepare --domains cluster:K`); "
            "each is named after its most distinctive terms. Documents and share: in the whole corpus.",
            tables.clusters_table(corpus["clusters"], domains),
        ]
    parts += [
        "## Final validation loss per domain",
        "Token-weighted next-token cross-entropy (nats) on each domain's validation blocks, as in the "
        "LinUpper paper's Table 1; *average* is the uniform mean over domains. Lower is better; the best "
        "value of each column is in **bold**.",
        tables.results_table(finals, domains, "loss"),
        "## Final validation perplexity per domain",
        "exp(loss); *average* is exp(average loss).",
        tables.results_table(finals, domains, "perplexity"),
    ]
    if corpus["irreducible_loss"] and any(v is not None for v in corpus["irreducible_loss"].values()):
        parts += [
            "## Gap to the irreducible loss (synthetic corpus)",
            "Final validation loss minus the domain's irreducible loss (the entropy of its generator, "
            "from manifest.json); 0 means nothing left to learn. Lower is better.",
            tables.gap_table(finals, domains, corpus["irreducible_loss"]),
        ]
    base_steps = speed["baseline_steps"]
    parts += [
        "## Steps to reach the baseline's final loss",
        f"Target: `{speed['baseline']}`'s final average validation loss, {tables.fmt(speed['target_average_loss'])} "
        f"(mean over its seeds). Steps: the first step at which an arm's average validation loss (mean over "
        "seeds, at the eval steps all seeds share) reaches the target, linearly interpolated between evaluations; "
        f"the baseline itself reaches it at step {'n/a' if base_steps is None else tables.fmt(base_steps, 1)}. "
        f'Ratio = {speed["baseline"]}_steps / arm_steps, DoReMi\'s "x fewer steps" (> 1: faster than the baseline).',
        tables.speedup_table(speed),
        *_paired_sections(report),
        *_compute_sections(report, figs),
    ]
    mixtures = report["domain_weights"]
    if mixtures:
        parts += [
            "## Domain weights",
            "Sampling proportions of the domains: the corpus's natural mixture (train token counts) and "
            "each method's weights.",
            tables.weights_table(mixtures, domains),
            *_weight_warnings(mixtures),
            f"![domain weights]({figs['domain_weights']})",
        ]
        for name, path in trajectories.items():
            parts += [f"### {name}: weights during the proxy run", f"![{name} trajectory]({path})"]
        for name, (_, path, heading, caption) in method_figures.items():  # e.g. regmix: the swarm's fit
            parts += [f"### {name}: {heading}", caption, f"![{name} fit]({path})"]
        if "online_trajectories" in figs:
            parts += [
                "### Online mixing: the weights of each phase",
                "Arms with online domain weights chose a new mixture every `mixing.every` steps from their own "
                "losses; each line is a domain's sampling weight per phase, the levels in the same colour are the "
                "offline mixtures' weights for that domain. In the table above their weights are the proportions "
                "averaged over the trained steps.",
                f"![online trajectories]({figs['online_trajectories']})",
            ]
        without = [
            n
            for n, m in mixtures.items()
            if m["method"].get("name") not in ("natural", "uniform") and n not in trajectories and not m.get("online")
        ]
        if without:
            parts.append(f"No trajectory recorded for: {', '.join(without)}.")
    if report.get("planned_epochs"):
        parts += [
            "## Planned epochs per domain",
            "How many passes over each domain's training tokens an arm's run plans: the sum over its mixture "
            "phases of weight x the phase's tokens / the domain's training tokens (mean over seeds). Above 1 the "
            "run repeats the domain; * marks a domain whose weight `--max-epochs` lowered to its cap.",
            epochs_table(report["planned_epochs"], domains),
        ]
    if report["sample_weights"]:
        parts += [
            "## Sample-weight diagnostics",
            "For arms that reweight samples: max_i(w_i)·N per logged step (the convergence theorem needs "
            "≤ 2; LinUpper does not enforce it) and the effective sample size (1/Σw²)/N (1 = plain mean).",
            tables.diagnostics_table(report["sample_weights"]),
            f"![sample-weight diagnostics]({figs['sample_weights']})",
        ]
    else:
        parts += ["## Sample-weight diagnostics", "No arm reweights samples (all train on the plain mean loss)."]
    if report["downstream"]:
        parts += [
            "## Downstream accuracy (lm-eval-harness)",
            "Few-shot accuracy of each arm's final checkpoint per task (mean ± std over seeds), as in the "
            "LinUpper paper's Tables 2 and 3. Higher is better; the best value of each column is in **bold**.",
            tables.downstream_table(report["downstream"]),
        ]
    links = [
        f"- `{run}`: " + "; ".join(f"{name} {where}" for name, where in trackers.items())
        for arm in arms.values()
        for run, trackers in arm.get("trackers", {}).items()
    ]
    if links:
        parts += ["## Experiment trackers", "Where each run's metrics were mirrored (`report_to`).", "\n".join(links)]
    parts += [
        "## Validation curves",
        "Validation loss per domain and the uniform average during training, a line per arm (band: ± std over seeds).",
        f"![validation curves]({figs['validation_curves']})",
    ]
    return "\n\n".join(parts) + "\n"


def _paired_sections(report: dict) -> list[str]:
    pairs, base = report["paired"], report["baseline"]
    if not pairs:
        return []
    return [
        f"## Each arm against `{base}`, seed by seed",
        f"Each run is paired with `{base}`'s run of the same seed (same model initialization; the same batches when "
        "the mixtures are the same). Δ = arm - baseline, final validation loss (negative: the arm is better); "
        "[95% CI]: with 3 or more paired seeds, Student's t over the seeds' differences; with fewer, a paired "
        "bootstrap over seeds and validation blocks (it sees one seed's validation-sample noise, not how much "
        "another seed would move the result). Verdict: **better** or **worse** when the interval excludes 0, "
        "else **not distinguishable**; each arm is tested on its own at 95%, with no correction for testing "
        f"several arms. Steps: per seed, the first step at which the arm's average validation loss reaches "
        f"`{base}`'s final average loss of that seed (interpolated between evaluations); mean [95% t interval] when "
        "every seed reaches it.",
        tables.paired_table(pairs, base),
        *[f"- `{arm}`: {e['note']}" for arm, e in pairs.items() if e.get("note")],
        "### Per domain",
        "Δ final validation loss [95% CI] per domain; ↓ better, ↑ worse (the interval excludes 0).",
        tables.paired_domains_table(pairs, report["corpus"]["domains"]),
    ]


def _compute_sections(report: dict, figs: dict[str, str]) -> list[str]:
    costs, base = report["compute"], report["baseline"]
    parts = [
        "## Compute",
        "Training FLOPs (forward and backward, 6 N + 12 n_layer d_attn T per token; docs/algorithms.md section 7), "
        "mean over seeds. Main run: the arm's own training, with the extra work of its step (a reference forward, "
        "DoGE's gradient products, a whole-step forward) as a share of the model's forward and backward. Weights "
        "stage: the runs that made the arm's domain weights (DoReMi: reference and proxy; DoGE: proxy; RegMix: the "
        "swarm; online DoReMi: its reference run), charged in full to every arm that uses them. To reach "
        f"`{base}`'s loss: weights stage + the paired steps of the table above x the run's FLOPs per step, "
        f"[95% t interval], and (in brackets) `{base}`'s total over it: above 1x the arm got there with less compute. "
        "n/a: a run or weights file from an older mixweight, without a compute record.",
        tables.cost_table(costs, base),
    ]
    if "loss_vs_flops" in figs:
        parts += [
            "Average validation loss against total FLOPs (a line per arm, mean over seeds; a line starts where "
            "its weights stage ends).",
            f"![loss against FLOPs]({figs['loss_vs_flops']})",
        ]
    return parts
