"""Run directories read for a comparison, grouped into arms (one arm = one recipe, several seeds).

A run directory (written by `mixweight train`) holds `config.yaml`, `metrics.jsonl` and
`eval.json`; its corpus's `manifest.json` is found through the config's `data` (or a corpus
given explicitly). Nothing here computes a statistic: see `stats.py`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mixweight.core.tracking import tracker_links
from mixweight.core.yamlio import load_yaml_file
from mixweight.data.corpus import SYNTHETIC_ALIAS
from mixweight.data.manifest import MANIFEST_NAME, Manifest
from mixweight.data.synthetic import default_corpus_dir
from mixweight.errors import MixweightError
from mixweight.train.config import saved_config_values


@dataclass
class Run:
    path: Path
    config: dict  # the resolved TrainConfig as written to config.yaml, in today's spelling (saved_config_values)
    final: dict  # eval.json: {"step", "domains", "average_loss", ...}
    records: list[dict]  # metrics.jsonl, one record per step (last one wins on duplicates)
    manifest: Manifest | None  # None when the corpus is not on this machine
    corpus: str | None
    trackers: dict[str, str] = field(default_factory=dict)  # tracker -> its run (trackers.json), for links

    @property
    def seed(self):
        return self.config.get("seed")

    def eval_records(self) -> list[tuple[int, dict]]:
        """(step, eval summary) in step order; eval.json is appended when it is newer than the log."""
        evals = {r["step"]: r["eval"] for r in self.records if "eval" in r}
        if self.final.get("step") is not None and self.final["step"] not in evals:
            if not evals or self.final["step"] > max(evals):
                evals[self.final["step"]] = self.final
        return sorted(evals.items())

    def step_records(self) -> list[dict]:
        return [r for r in self.records if "eval" not in r and "weights" in r]


@dataclass
class Arm:
    name: str
    runs: list[Run]


def _read_manifest(corpus: str | None) -> Manifest | None:
    if not corpus:
        return None
    path = Path(default_corpus_dir() if corpus == SYNTHETIC_ALIAS else corpus) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(path.read_text()), where=str(path))
    except json.JSONDecodeError as exc:
        raise MixweightError(f"{path}: not valid JSON ({exc}); re-create the corpus") from exc


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    by_key: dict[tuple, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MixweightError(f"{path}:{number}: not valid JSON ({exc})") from exc
        by_key[(record.get("step"), "eval" in record)] = record  # a resumed run may repeat a step
    return sorted(by_key.values(), key=lambda r: (r.get("step") or 0, "eval" in r))


def load_run(path: str | Path) -> Run:
    """Read one finished run directory (and the manifest of the corpus named in its config)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise MixweightError(
            f"{path}: not a run directory (no config.yaml); give directories made by `mixweight train --out`"
        )
    if not (path / "eval.json").is_file():
        raise MixweightError(
            f"{path}: no eval.json, so the run has not finished; let `mixweight train` finish (--resume continues it)"
        )
    config = load_yaml_file(path / "config.yaml", "the run's config")
    config = saved_config_values(config, str(path / "config.yaml")) if isinstance(config, dict) else {}
    try:
        final = json.loads((path / "eval.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MixweightError(f"{path / 'eval.json'}: not valid JSON ({exc}); re-run `mixweight eval {path}`") from exc
    if not isinstance(final, dict) or not isinstance(final.get("domains"), dict) or not final["domains"]:
        raise MixweightError(f"{path / 'eval.json'}: no per-domain results ('domains'); re-run `mixweight eval {path}`")
    corpus = config.get("data")
    return Run(
        path, config, final, _read_records(path / "metrics.jsonl"), _read_manifest(corpus), corpus, tracker_links(path)
    )


def group_arms(runs, labels=None) -> list[Arm]:
    """Arms in first-seen order from a list of run dirs (label: dir name or `labels[i]`)
    or from a {arm name: [run dirs, one per seed]} mapping."""
    if isinstance(runs, dict):
        if labels is not None:
            raise MixweightError("compare: give arm names either as the keys of `runs` or as `labels`, not both")
        pairs = [
            (str(name), p)
            for name, paths in runs.items()
            for p in ([paths] if isinstance(paths, (str, Path)) else paths)
        ]
    else:
        runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
        if labels is not None and len(labels) != len(runs):
            raise MixweightError(f"compare: {len(labels)} labels for {len(runs)} runs; give one label per run")
        pairs = [(str(labels[i]) if labels is not None else Path(p).resolve().name, p) for i, p in enumerate(runs)]
    if not pairs:
        raise MixweightError("compare: no runs given; pass one or more run directories")
    arms: dict[str, Arm] = {}
    for name, path in pairs:
        run = load_run(path)
        arm = arms.setdefault(name, Arm(name, []))
        if any(Path(r.path).resolve() == Path(path).resolve() for r in arm.runs):
            raise MixweightError(f"compare: run {path} is given twice for arm '{name}'")
        twin = next((r for r in arm.runs if r.seed == run.seed), None)
        if twin is not None:
            warnings.warn(
                f"compare: arm '{name}' has two runs with seed {run.seed} ({twin.path}, {path}); "
                "they are averaged as seeds; pass labels to keep them apart",
                stacklevel=2,
            )
        arm.runs.append(run)
    return list(arms.values())


def check_same_corpus(runs: list[Run], corpus: str | None = None) -> Manifest | None:
    """All runs must be evaluated on the same corpus (same manifest hash, same domains);
    returns that corpus's manifest (`corpus`'s when given), None when none is readable."""
    first = runs[0]
    domains = sorted(first.final["domains"])
    for run in runs[1:]:
        if sorted(run.final["domains"]) != domains:
            raise MixweightError(
                f"compare: runs were evaluated on different domains: {first.path} has {domains}, "
                f"{run.path} has {sorted(run.final['domains'])}; compare runs on the same corpus"
            )
    hashed = [r for r in runs if r.manifest is not None and r.manifest.config_hash]
    for run in hashed[1:]:
        if run.manifest.config_hash != hashed[0].manifest.config_hash:
            raise MixweightError(
                f"compare: runs were trained on different corpora: {hashed[0].path} on {hashed[0].corpus} "
                f"(config_hash {hashed[0].manifest.config_hash}), {run.path} on {run.corpus} "
                f"(config_hash {run.manifest.config_hash}); compare runs on the same corpus"
            )
    if corpus is None:
        return hashed[0].manifest if hashed else next((r.manifest for r in runs if r.manifest), None)
    given = _read_manifest(str(corpus))
    if given is None:
        raise MixweightError(
            f"compare: corpus {corpus}: no {MANIFEST_NAME} there; give the directory of a prepared corpus"
        )
    if sorted(given.domains) != domains:
        raise MixweightError(
            f"compare: corpus {corpus} has domains {sorted(given.domains)}, "
            f"but run {first.path} was evaluated on {domains}"
        )
    if hashed and given.config_hash and given.config_hash != hashed[0].manifest.config_hash:
        raise MixweightError(
            f"compare: corpus {corpus} (config_hash {given.config_hash}) is not the corpus run {hashed[0].path} "
            f"was trained on ({hashed[0].corpus}, config_hash {hashed[0].manifest.config_hash})"
        )
    return given
