"""Pictures of domain weights: the trajectory over proxy steps, and final vs natural proportions (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mixweight.core.artifact import DomainWeights  # noqa: E402


def _trajectory_weights(entry: dict, domains: list[str]) -> list[float]:
    weights = entry["weights"]
    return [weights[d] for d in domains] if isinstance(weights, dict) else list(weights)


def plot_trajectory(weights: DomainWeights, path: str | Path) -> Path:
    """Weight of each domain against the proxy step (one line per domain, final average dashed)."""
    path = Path(path)
    steps = [e["step"] for e in weights.trajectory]
    series = [_trajectory_weights(e, weights.domains) for e in weights.trajectory]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, domain in enumerate(weights.domains):
        (line,) = ax.plot(steps, [s[i] for s in series], label=domain, marker="." if len(steps) < 30 else None)
        ax.axhline(weights.weights[i], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("proxy step")
    ax.set_ylabel("domain weight")
    ax.set_title(f"{weights.method.get('name', 'domain weights')}: trajectory (dashed: final)")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_weights_vs_natural(
    weights: DomainWeights, natural: dict[str, float], path: str | Path, label: str = "natural"
) -> Path:
    """Bars per domain: the final weights beside a reference mixture, by default the natural (token-count)
    proportions (regmix: the prior its swarm was centred on, `label` naming it)."""
    path = Path(path)
    x = range(len(weights.domains))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(weights.domains)), 4))
    ax.bar([i - 0.2 for i in x], [natural.get(d, 0.0) for d in weights.domains], width=0.4, label=label)
    ax.bar([i + 0.2 for i in x], weights.weights, width=0.4, label=weights.method.get("name", "weights"))
    ax.set_xticks(list(x), weights.domains, rotation=30, ha="right")
    ax.set_ylabel("proportion")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_regmix_fit(method: dict, path: str | Path, title: str | None = None, size: float = 5.0) -> Path | None:
    """A regmix record's held-out predicted against observed target loss, one point per swarm run (the fit the
    weights rest on); None, nothing written, when `method` is not a regmix record with a fit."""
    fit, swarm = method.get("fit"), method.get("swarm")
    if method.get("name") != "regmix" or not isinstance(fit, dict) or not isinstance(swarm, list):
        return None
    cv = fit.get("cross_validation") or {}
    predicted = list(cv.get("predicted") or [])
    observed = [run.get("target_loss") for run in swarm if isinstance(run, dict)]
    if len(predicted) != len(observed) or not observed:
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.scatter(observed, predicted, s=16)
    low, high = min(observed + predicted), max(observed + predicted)
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("observed target loss (swarm run)")
    ax.set_ylabel(f"predicted ({cv.get('method', 'held out')})")
    name = title if title is not None else str(fit.get("regressor", "regmix"))
    ax.set_title(f"{name}: Spearman {cv.get('spearman', float('nan')):.2f}, MAE {cv.get('mae', float('nan')):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
