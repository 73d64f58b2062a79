"""The domain weights (mixtures) compared side by side: the corpus's natural mixture, uniform,
each method's `domain_weights.json` with its trajectory, and each online-mixing arm's per-phase
trajectory (the `domain_weights.json` its run wrote; its `weights` are the proportions averaged
over the trained steps)."""

from __future__ import annotations

from pathlib import Path

from mixweight.core.artifact import load_domain_weights
from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError
from mixweight.report.runs import Arm
from mixweight.sampling.spec import MixtureSpec

ONLINE_WEIGHTS = "domain_weights.json"  # what an online-mixing run writes into its run directory


def _trajectory(entries: list[dict], file_domains: list[str], where: str) -> dict:
    steps, series = [], {d: [] for d in file_domains}
    for i, entry in enumerate(entries):
        weights = entry.get("weights")
        if isinstance(weights, list) and len(weights) == len(file_domains):
            weights = dict(zip(file_domains, weights))
        if not isinstance(weights, dict) or sorted(weights) != sorted(file_domains):
            raise MixweightError(
                f"{where}: trajectory[{i}] has weights {weights!r}, expected one per domain {file_domains}"
            )
        steps.append(entry.get("step", i))
        for d in file_domains:
            series[d].append(float(weights[d]))
    return {"steps": steps, "weights": series}


def load_mixture(path: str | Path, domains: list[str]) -> dict:
    """A weights file over the runs' domains, or a subset of them: DoGE's out-of-domain weights
    leave the held-out target domains out (older files) or list them as ``targets`` at weight 0;
    either way they count as weight 0 and are listed as held out. The artifact's health
    ``warnings`` (collapse, floor, not converged) come along, to be shown next to the weights."""
    dw = load_domain_weights(path)
    extra = [d for d in dw.domains if d not in domains]
    if extra:
        raise MixweightError(f"domain weights file {path}: domains {extra} are not among the runs' domains {domains}")
    by_name = dw.as_dict()
    return {
        "weights": {d: by_name.get(d, 0.0) for d in domains},
        "method": dw.method,
        "source": str(path),
        "held_out": [d for d in domains if d not in by_name or d in dw.targets],
        "trajectory": _trajectory(dw.trajectory, dw.domains, str(path)) if dw.trajectory else None,
        "warnings": list(dw.warnings),
    }


def _weights_files_of_runs(arms: list[Arm]) -> dict[str, Path]:
    """Weights files the arms trained on (config `domain_weights` naming a file), by method name."""
    found: dict[str, Path] = {}
    for arm in arms:
        for run in arm.runs:
            spec = str(run.config.get("domain_weights", ""))
            if spec in ("", "natural", "uniform") or not Path(spec).is_file():
                continue
            path = Path(spec)
            if any(path.resolve() == p.resolve() for p in found.values()):
                continue
            method = load_domain_weights(path).method.get("name") or path.stem
            name = method if method not in found else f"{method} ({arm.name})"
            found[name] = path
    return found


def collect_mixtures(
    arms: list[Arm], domains: list[str], manifest: Manifest | None, weights_files: dict[str, str | Path] | None
) -> dict[str, dict]:
    """name -> {"weights": {domain: w}, "method", "source", "trajectory"} in a stable order:
    natural, uniform (when an arm samples uniformly), then the methods' files."""
    mixtures: dict[str, dict] = {}
    if manifest is not None and all(d in manifest.splits.get("train", {}) for d in domains):
        natural = manifest.natural_weights()
        mixtures["natural"] = {
            "weights": {d: natural[d] for d in domains},
            "method": {"name": "natural"},
            "source": "manifest.json (train token counts)",
            "held_out": [],
            "trajectory": None,
        }
    if any(str(r.config.get("domain_weights")) == "uniform" for a in arms for r in a.runs):
        mixtures["uniform"] = {
            "weights": {d: 1.0 / len(domains) for d in domains},
            "method": {"name": "uniform"},
            "source": "uniform",
            "held_out": [],
            "trajectory": None,
        }
    files = weights_files if weights_files is not None else _weights_files_of_runs(arms)
    for name, path in files.items():
        mixtures[str(name)] = load_mixture(path, domains)
    for name, path in online_weights_files(arms).items():
        mixtures[name if name not in mixtures else f"{name} (online)"] = {**load_mixture(path, domains), "online": True}
    return mixtures


def online_weights_files(arms: list[Arm]) -> dict[str, Path]:
    """Each online-mixing arm's weights trajectory (RUN/domain_weights.json of its first seed that has one)."""
    found: dict[str, Path] = {}
    for arm in arms:
        for run in arm.runs:
            path = Path(run.path) / ONLINE_WEIGHTS
            if MixtureSpec.parse(run.config.get("domain_weights", "")).online and path.is_file():
                found[arm.name] = path
                break
    return found
