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


def plot_weights_vs_natural(weights: DomainWeights, natural: dict[str, float], path: str | Path) -> Path:
    """Bars per domain: the final weights beside the natural (token-count) proportions."""
    path = Path(path)
    x = range(len(weights.domains))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(weights.domains)), 4))
    ax.bar([i - 0.2 for i in x], [natural.get(d, 0.0) for d in weights.domains], width=0.4, label="natural")
    ax.bar([i + 0.2 for i in x], weights.weights, width=0.4, label=weights.method.get("name", "weights"))
    ax.set_xticks(list(x), weights.domains, rotation=30, ha="right")
    ax.set_ylabel("proportion")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
