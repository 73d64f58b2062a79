"""The report's figures (PNG, matplotlib's Agg renderer through `Figure`: no pyplot, no global
backend switch). Each function writes one file into `out_dir` and returns its name."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 110


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=DPI, metadata={"Software": None})
    return name


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "method"


def _line(ax, steps, series: dict, label: str) -> None:
    mean, std = np.asarray(series["mean"], float), np.asarray(series["std"], float)
    (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
    if std.any():
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def validation_curves(out_dir: Path, curves: dict[str, dict], domains: list[str]) -> str:
    """One subplot per domain plus the uniform average; a line per arm (band: +- std over seeds)."""
    panels = [*domains, "average"]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for arm, curve in curves.items():
            series = curve["average_loss"] if panel == "average" else curve["domains"][panel]
            _line(ax, curve["steps"], series, arm)
        ax.set_title("uniform average" if panel == "average" else panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, out_dir, "validation_curves.png")


def domain_weights_bars(out_dir: Path, mixtures: dict[str, dict], domains: list[str]) -> str:
    """Grouped bars: a group per domain, a bar per mixture."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(domains) * max(1, len(mixtures)) / 2 + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(mixtures))
    for i, (name, mixture) in enumerate(mixtures.items()):
        ax.bar(x + (i - (len(mixtures) - 1) / 2) * width, [mixture["weights"][d] for d in domains], width, label=name)
    ax.set_xticks(x, domains, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("domain weight")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, "domain_weights.png")


def weight_trajectory(out_dir: Path, name: str, trajectory: dict) -> str:
    """A method's domain weights vs step, a line per domain."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for domain, values in trajectory["weights"].items():
        ax.plot(trajectory["steps"], values, label=domain)
    ax.set_title(f"{name}: domain weights during training", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("domain weight")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, f"weights_trajectory_{slug(name)}.png")


def sample_weight_diagnostics(out_dir: Path, diagnostics: dict[str, dict]) -> str:
    """max_i(w_i) * N (Theorem 1's bound is 2) and ESS / N over training, a line per arm."""
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for arm, diag in diagnostics.items():
        left.plot(diag["curve"]["steps"], diag["curve"]["max_weight_x_n"], label=arm)
        right.plot(diag["curve"]["steps"], diag["curve"]["ess_fraction"], label=arm)
    left.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="bound 2 (Theorem 1)")
    left.set_title("max sample weight x N", fontsize=10)
    right.set_title("effective sample size / N", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_dir, "sample_weights.png")


def online_trajectories(out_dir: Path, online: dict[str, dict], offline: dict[str, dict], domains: list[str]) -> str:
    """A panel per online-mixing arm: each domain's sampling weight per phase (a step line, to the arm's last
    step) and, in the same colour, each offline mixture's weight for that domain as a level (one line style each)."""
    styles = ["--", ":", "-."]
    fig = Figure(figsize=(7.2, 3.4 * len(online)))
    for i, (name, mixture) in enumerate(online.items()):
        ax = fig.add_subplot(len(online), 1, i + 1)
        steps = list(mixture["trajectory"]["steps"])
        end = max(int(mixture["method"].get("steps") or 0), steps[-1] + 1)
        for j, domain in enumerate(domains):
            values = mixture["trajectory"]["weights"].get(domain)
            if values is None:
                continue
            color = f"C{j % 10}"
            ax.step([*steps, end], [*values, values[-1]], where="post", color=color, label=domain)
            for k, other in enumerate(offline.values()):
                level = other["weights"].get(domain)
                if level is not None:
                    ax.axhline(level, color=color, linestyle=styles[k % len(styles)], linewidth=0.8, alpha=0.6)
        levels = ", ".join(f"{styles[k % len(styles)]} {n}" for k, n in enumerate(offline))
        ax.set_title(f"{name}: weights per phase" + (f" (levels: {levels})" if levels else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("domain weight")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_dir, "online_trajectories.png")


def loss_against_flops(out_dir: Path, series: dict[str, dict]) -> str:
    """Average validation loss (mean over seeds) against total training FLOPs, weights stage included: a line per
    arm, starting where its weights stage ends."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for arm, points in series.items():
        ax.plot(points["flops"], points["average_loss"], marker="o", markersize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (weights stage + main run)", fontsize=9)
    ax.set_ylabel("average validation loss", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "loss_vs_flops.png")
