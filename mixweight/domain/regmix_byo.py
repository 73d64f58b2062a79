"""`weights regmix --swarm-table MIXTURES.csv LOSSES.csv`: fit and optimise a swarm trained anywhere.

    the table (regmix_table.read_swarm_table) -> with --data, its domain names mapped to the corpus's
      -> the targets: every loss column (`all`) or the named ones; runs whose target loss is missing left out
      -> the prior (natural: the corpus's token counts, or without --data the table's mean mixture; uniform)
      -> the caps (--token-budget, --max-epochs: they need the corpus's token counts)
      -> regmix_fit.fit_swarm -> domain_weights.json (+ plots), which `weights verify` refits like any other

Without --data the artifact names the table's domains; with it, every corpus domain (a corpus domain the
table has no column for gets weight 0, and the command says so). A target may be a domain the swarm trained
on (RegMix minimises Pile-CC's loss and trains on Pile-CC); only a target that no mixture column names is
held out (the artifact's `targets`). Nothing is trained, nothing but the artifact and its plots is written.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import mixweight
from mixweight.core.artifact import check_output_file
from mixweight.data.corpus import open_corpus
from mixweight.data.manifest import Manifest
from mixweight.domain.proxy import UNHASHED, write_artifact
from mixweight.domain.regmix_fit import Swarm, fit_swarm, repetition_block, write_plots
from mixweight.domain.regmix_table import check_domain_map, map_domains, read_swarm_table
from mixweight.errors import MixweightError, did_you_mean

# Options that mean nothing for a table (they shape a swarm mixweight trains): left out of its record and hash.
TRAINING_OPTIONS = {"proxy", "steps", "log_every", "runs", "concentration", "match_repetition", "plan", "launcher"}
TRAINING_OPTIONS |= {"launcher_options", "retries", "fit", "train"}


def table_swarm(config, manifest: Manifest | None) -> tuple[Swarm, np.ndarray, np.ndarray | None, dict]:
    """The table as the fit reads it: (swarm, prior, caps or None, the record of where it came from)."""
    mixtures_path, losses_path = config.swarm_table
    table = read_swarm_table(mixtures_path, losses_path)
    where = f"{Path(mixtures_path).name}, {Path(losses_path).name}"
    check_domain_map(config.domain_map, table.domains + table.metrics, where)
    if manifest is not None:
        mapping = map_domains(table.domains, list(manifest.domains), config.domain_map, where)
        for name, domain in map_domains(table.metrics, list(manifest.domains), config.domain_map, where, False).items():
            mapping.setdefault(name, domain)
        domains = list(manifest.domains)
    else:
        mapping, domains = {}, list(table.domains)
    named = [mapping.get(d, d) for d in table.domains]
    metrics = [mapping.get(m, m) for m in table.metrics]
    if manifest is not None:  # the mixture's columns in corpus order
        order = sorted(range(len(named)), key=lambda j: domains.index(named[j]))
    else:
        order = list(range(len(named)))
    train_domains = [named[j] for j in order]
    x = table.x[:, order]
    targets = _targets(config.target, metrics, where)
    columns = [metrics.index(t) for t in targets]
    usable = [i for i in range(len(table.keys)) if np.isfinite(table.losses[i, columns]).all()]
    left_out = [table.keys[i] for i in range(len(table.keys)) if i not in usable]
    needed = len(train_domains) + 1
    if len(usable) < needed:
        raise MixweightError(
            f"weights regmix: the swarm table ({where}) has {len(usable)} runs with every target loss, too few for "
            f"{len(train_domains)} domains: the regression needs at least {needed} (the domains + 1)"
        )
    runs = []
    for i in usable:
        losses = {m: float(v) for m, v in zip(metrics, table.losses[i]) if np.isfinite(v)}
        weights = {d: 0.0 for d in domains}
        weights.update(zip(train_domains, x[i].tolist()))
        runs.append({"run": table.keys[i], "weights": weights, "losses": losses})
    prior = _prior(config, manifest, train_domains, x[usable])
    caps = _caps(config, manifest, train_domains, prior)
    source = {
        "layout": table.layout,
        "files": table.files,
        "columns": {d: table.columns[name] for d, name in zip(named, table.domains)},
        "domain_map": {name: mapping[name] for name in table.domains if mapping.get(name, name) != name},
        "left_out": {"no_losses_row": table.unmatched, "missing_target_loss": left_out},
    }
    if manifest is None and config.prior == "natural":
        source["prior"] = "the table's mean mixture (no --data: no token counts)"
    swarm = Swarm(domains, train_domains, targets, x[usable], runs)
    return swarm, prior, caps, source


def _targets(target: str, metrics: list[str], where: str) -> list[str]:
    if target.strip() == "all":
        return list(metrics)
    names = [t.strip() for t in target.split(",")]
    for name in names:
        if name not in metrics:
            raise MixweightError(
                f"weights regmix: --target '{name}' is no loss column of the swarm table ({where}); "
                f"{did_you_mean(name, metrics, cutoff=0.4)}its loss columns are {', '.join(metrics)} (or all)"
            )
    return list(dict.fromkeys(names))


def _prior(config, manifest: Manifest | None, train_domains: list[str], x: np.ndarray) -> np.ndarray:
    if config.prior == "uniform":
        return np.full(len(train_domains), 1.0 / len(train_domains))
    if manifest is None:  # the swarm was drawn around its prior: their mean is its best estimate here
        mean = x.mean(axis=0)
        return mean / mean.sum()
    tokens = np.array([manifest.splits["train"][d].tokens for d in train_domains], dtype=np.float64)
    return tokens / tokens.sum()


def _caps(config, manifest: Manifest | None, train_domains: list[str], prior: np.ndarray) -> np.ndarray | None:
    if config.token_budget is None:
        return None
    if manifest is None:
        raise MixweightError(
            "weights regmix: --token-budget (and --max-epochs) with --swarm-table need --data: the caps are "
            "max_epochs x each domain's training tokens / T, and the tokens are the corpus's"
        )
    from mixweight.sampling.repetition import project_max_epochs

    tokens = manifest.train_tokens()
    counts = [tokens[d] for d in train_domains]
    project_max_epochs(train_domains, prior.tolist(), counts, config.max_epochs, config.token_budget, "weights regmix")
    return np.array([config.max_epochs * c / config.token_budget for c in counts])


def _say_what_was_left_out(swarm: Swarm, source: dict) -> None:
    unmatched, missing = source["left_out"]["no_losses_row"], source["left_out"]["missing_target_loss"]
    absent = [d for d in swarm.domains if d not in swarm.train_domains and d not in swarm.target_domains]
    where = ", ".join(f["file"] for f in source["files"].values())

    def some(keys: list) -> str:
        return ", ".join(map(str, keys[:8])) + (" ..." if len(keys) > 8 else "")

    notes = []
    if unmatched:
        notes.append(f"{len(unmatched)} mixture rows have no losses row (unfinished?), left out: {some(unmatched)}")
    if missing:
        notes.append(f"{len(missing)} runs lack a target loss, left out: {some(missing)}")
    if absent:
        notes.append(f"corpus domains {absent} have no column in the table: weight 0")
    for note in notes:
        print(f"mixweight regmix: {where}: {note}", file=sys.stderr, flush=True)


def _provenance(config, manifest: Manifest | None, corpus: str | None, source: dict) -> dict:
    options = {k: v for k, v in config.options().items() if k not in UNHASHED | TRAINING_OPTIONS}
    options["swarm_table"] = [f["sha256"] for f in source["files"].values()]
    values = {**options, "corpus_config_hash": manifest.config_hash if manifest else None}
    found = {
        "seed": config.seed,
        "config_hash": hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest(),
        "swarm_table": source["files"],
    }
    if manifest is not None:
        found.update(
            tokenizer_fingerprint=manifest.tokenizer.get("fingerprint"),
            domain_token_counts=manifest.train_tokens(),
            corpus=str(Path(corpus).resolve()),
            corpus_config_hash=manifest.config_hash,
        )
    found["mixweight_version"] = mixweight.__version__
    return found


def run_table(config):
    """Fit and optimise the table's swarm and write the artifact to `config.out`."""
    config.validate()
    config.require_paths()
    check_output_file(config.out, f"{config.COMMAND}: --out")
    corpus = manifest = None
    if config.data is not None:
        opened = open_corpus(config.data)
        corpus, manifest = opened.directory, opened.manifest
    swarm, prior, caps, source = table_swarm(config, manifest)
    _say_what_was_left_out(swarm, source)
    record = {
        "name": "regmix",
        "runs": len(swarm.runs),
        "source": source,
        "prior": config.prior,
        "prior_weights": dict(zip(swarm.train_domains, prior.tolist())),
        "target": config.target,
    }
    result = fit_swarm(config, swarm, prior, caps, record)
    if manifest is not None:
        repetition = repetition_block(config, swarm.domains, manifest.train_tokens(), result.weights)
        if repetition is not None:
            result.method["repetition"] = repetition
    result.targets = [t for t in swarm.target_domains if t in swarm.domains and t not in swarm.train_domains]
    result.provenance = _provenance(config, manifest, corpus, source)
    write_artifact(result, config.out, manifest, plots=write_plots)
    return result
