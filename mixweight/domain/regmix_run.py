"""`mixweight weights regmix`: a swarm of small proxy runs on sampled mixtures -> a regression -> the best mixture.

    RegMixConfig (regmix_config.py) -> corpus, targets, prior (natural | uniform over the training domains)
      -> K mixtures (regmix.sample_mixtures: the prior, uniform, Dirichlet draws around the prior)
      -> one ordinary training run per mixture (`swarm.train_swarm`: a TrainConfig whose domain_weights is
         the run's mixture file, trained here or across the processes of a torchrun job), each run's eval.json
      -> the fit and the optimum (`regmix_fit.fit_swarm`) -> domain_weights.json + two plots

The work directory (default `<out stem>.work/` beside `out`) holds `mixtures/run-NNN.json`
and `runs/run-NNN/`: each run is cached on its own, so a rerun trains only the runs that are
missing and resumes an interrupted one. Mixture i depends on (seed, i) alone, so raising
--runs keeps the finished runs. `regmix_config.yaml` (`proxy.claim_work_dir`) records the
options that define the runs (SWARM_KEYS, the train block but its checkpoint keys, the proxy
spec, the corpus); a work directory made with other ones is refused, naming them.

The main process fits and writes. The artifact holds no paths or timings: the same seed and config give the same
bytes, whatever the process count.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mixweight.core.artifact import DomainWeights, corpus_weights, load_domain_weights
from mixweight.core.distributed import barrier, broadcast_object, close_world, init_world
from mixweight.core.model import load_spec
from mixweight.data.manifest import Manifest
from mixweight.domain import regmix
from mixweight.domain.proxy import (
    UNHASHED,
    claim_work_dir,
    effective_train_block,
    provenance,
    start,
    write_artifact,
)
from mixweight.domain.regmix_config import SWARM_KEYS, RegMixConfig, check_swarm  # noqa: F401  (CLI, pipeline)
from mixweight.domain.regmix_fit import Swarm, fit_swarm, repetition_block, write_plots
from mixweight.domain.swarm import finished, train_swarm
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

SWARM_FILE = "swarm.json"  # the record of a work directory made before regmix_config.yaml
# Train-block keys that change no run's result (how often a run checkpoints, how many it keeps): a work
# directory's record leaves them out, so changing them reuses the swarm.
UNRECORDED_TRAIN_KEYS = frozenset({"checkpoint_every", "keep_checkpoints"})


def swarm_record(config: RegMixConfig, manifest: Manifest) -> dict:
    """What defines the swarm beyond the options in SWARM_KEYS: recorded and compared by `claim_work_dir`."""
    skipped = UNHASHED | UNRECORDED_TRAIN_KEYS
    return {
        "train": {k: v for k, v in effective_train_block(config).items() if k not in skipped},
        "proxy_spec": load_spec(config.proxy),
        "corpus_config_hash": manifest.config_hash,
    }


def _legacy_swarm_json(config: RegMixConfig):
    """A work directory from before `regmix_config.yaml` records its swarm in `swarm.json`: the same options."""

    def check(work: Path) -> None:
        path = work / SWARM_FILE
        if not path.is_file():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise MixweightError(f"{path}: cannot be read; pass another --work-dir") from None
        changed = [k for k in SWARM_KEYS if isinstance(old, dict) and k in old and old[k] != getattr(config, k)]
        if changed:
            details = ", ".join(f"{k}: {old[k]!r} -> {getattr(config, k)!r}" for k in changed)
            raise MixweightError(
                f"{work}: holds regmix proxy runs made with a different config ({details}); "
                "delete it or choose another --work-dir"
            )

    return check


def member_config(config: RegMixConfig, corpus: str, work: Path, index: int) -> TrainConfig:
    """Swarm run `index`: an ordinary single-process training run on its own mixture file (the train block's
    options; one init and data seed for every run, so the mixtures are the only difference)."""
    train_config = config.proxy_train_config(
        work / "runs" / f"run-{index:03d}",
        domain_weights=str(work / "mixtures" / f"run-{index:03d}.json"),
        data=corpus,
    )
    train_config = dataclasses.replace(train_config, progress=False, report_to=[])
    train_config.validate()
    return train_config


def run_regmix(config: RegMixConfig) -> DomainWeights:
    """Train (or continue) the swarm, fit, optimise, and write the weights artifact to `config.out`; with
    --swarm-table, fit that table instead (regmix_byo)."""
    if config.swarm_table is not None:
        from mixweight.domain.regmix_byo import run_table

        return run_table(config)
    world = init_world()  # the command's process group under torchrun (or one of our own, closed at the end)
    try:
        return _run(config, world)
    finally:
        close_world(world)


def _members(config: RegMixConfig, corpus: str, domains: list[str], train_domains, targets, mixtures) -> list[dict]:
    work = config.resolved_work_dir()
    members = []
    for i, row in enumerate(mixtures):
        by_name = dict(zip(train_domains, row.tolist()))
        members.append(
            {
                "config": dataclasses.asdict(member_config(config, corpus, work, i)),
                "mixture": {d: by_name.get(d, 0.0) for d in domains},
                "targets": targets,
                "log": str(work / "logs" / f"run-{i:03d}.log"),
            }
        )
    return members


def _claim(config: RegMixConfig, manifest: Manifest, members: list[dict], world) -> None:
    """Main process: the work directory checked and recorded, every run's mixture file written; all processes
    learn the outcome (a refusal stops every one of them)."""
    outcome = None
    if world.is_main:
        try:
            claim_work_dir(config, _legacy_swarm_json(config), keys=SWARM_KEYS, extra=swarm_record(config, manifest))
            (config.resolved_work_dir() / "mixtures").mkdir(parents=True, exist_ok=True)
            domains = list(manifest.domains)
            for member in members:
                path = Path(member["config"]["domain_weights"])
                weights = DomainWeights(domains=domains, weights=corpus_weights(domains, member["mixture"]))
                if not path.is_file() or load_domain_weights(path).weights != weights.weights:
                    weights.write(path)
            outcome = ("ok", None)
        except MixweightError as exc:
            outcome = ("error", str(exc))
    outcome = broadcast_object(outcome, world)
    if outcome[0] == "error":
        raise MixweightError(outcome[1])


def _run(config: RegMixConfig, world) -> DomainWeights:
    opened = start(config)  # the config and --out checked before any training, the corpus read
    corpus, manifest = opened.directory, opened.manifest
    domains = list(manifest.domains)
    targets, train_domains, prior, caps = check_swarm(config, manifest)
    target_domains = targets or domains
    mixtures = regmix.sample_mixtures(prior, config.runs, config.concentration, config.seed)
    work = config.resolved_work_dir()
    members = _members(config, corpus, domains, train_domains, target_domains, mixtures)
    _claim(config, manifest, members, world)
    cached = sum(finished(Path(m["config"]["out"])) for m in members)
    if world.is_main:
        print(
            f"mixweight regmix: swarm of {config.runs} runs of {config.proxy} x {config.steps} steps "
            f"({cached} finished, {config.runs - cached} to train) in {work}",
            flush=True,
        )
    train_swarm(members, world, work, config.show_progress())

    # the fit: every process computes it (cheap, deterministic); the main one writes
    losses = [json.loads((Path(m["config"]["out"]) / "eval.json").read_text())["domains"] for m in members]
    runs = [
        {"run": i, "weights": members[i]["mixture"], "losses": {d: run[d]["loss"] for d in domains}}
        for i, run in enumerate(losses)
    ]
    swarm = Swarm(domains, train_domains, target_domains, mixtures, runs)
    diverged = [i for i, row in enumerate(swarm.y()) if not np.isfinite(row).all()]
    if diverged:
        raise MixweightError(
            f"weights regmix: swarm run(s) {diverged} ended with a non-finite validation loss on a target domain, "
            f"so no regression can use them; lower train.lr (or raise train.warmup_steps) and remove "
            f"{work / 'runs'}/run-NNN of those runs to train them again"
        )
    record = {
        "name": "regmix",
        "runs": config.runs,
        "steps": config.steps,
        "proxy": config.proxy,
        "train": {k: v for k, v in effective_train_block(config).items() if k not in UNHASHED},
        "prior": config.prior,
        "prior_weights": dict(zip(train_domains, prior.tolist())),
        "concentration": config.concentration,
        "target": config.target,
    }
    result = fit_swarm(config, swarm, prior, caps, record)
    repetition = repetition_block(config, domains, manifest.train_tokens(), result.weights)
    if repetition is not None:
        result.method["repetition"] = repetition
    result.targets = targets
    result.provenance = provenance(config, manifest, corpus)
    write_artifact(result, config.out, manifest, plots=write_plots)
    barrier(world)  # no process reads the weights before the main one has written them
    return result
