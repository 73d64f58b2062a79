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
from mixweight.core.blocks import config_dict
from mixweight.core.distributed import barrier, broadcast_object, close_world, init_world
from mixweight.core.model import load_spec
from mixweight.data.manifest import Manifest, load_manifest
from mixweight.data.remote import is_url
from mixweight.data.subsample import subsample_corpus
from mixweight.domain import regmix
from mixweight.domain.proxy import (
    UNHASHED,
    claim_work_dir,
    effective_train_block,
    provenance,
    runs_compute,
    start,
    write_artifact,
)
from mixweight.domain.regmix_config import SWARM_KEYS, RegMixConfig, check_swarm  # noqa: F401  (CLI, pipeline)
from mixweight.domain.regmix_fit import Swarm, fit_swarm, repetition_block, write_plots
from mixweight.domain.swarm import finished, train_swarm, write_plan
from mixweight.domain.swarm_launch import launch
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

SUBSAMPLE_DIR = "corpus-subsample"  # in the work directory: the runs' corpus when repetition is matched
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


def run_regmix(config: RegMixConfig) -> DomainWeights | None:
    """Train (or continue) the swarm, fit, optimise, and write the weights artifact to `config.out`; with
    --swarm-table, fit that table instead (regmix_byo); with --plan alone, write the plan and return None."""
    if config.swarm_table is not None:
        from mixweight.domain.regmix_byo import run_table

        return run_table(config)
    world = init_world()  # the command's process group under torchrun (or one of our own, closed at the end)
    try:
        return _run(config, world)
    finally:
        close_world(world)


def _members(config: RegMixConfig, data: str, work: Path, domains: list[str], train_domains, targets, mixtures):
    members = []
    for i, row in enumerate(mixtures):
        by_name = dict(zip(train_domains, row.tolist()))
        members.append(
            {
                "config": config_dict(member_config(config, data, work, i)),
                "mixture": {d: by_name.get(d, 0.0) for d in domains},
                "targets": targets,
                "log": str(work / "logs" / f"run-{i:03d}.log"),
            }
        )
    return members


def repetition_fraction(config: RegMixConfig, manifest: Manifest) -> float | None:
    """A swarm run's tokens over the main run's budget T, when its corpus is subsampled to that fraction
    (match_repetition with a token_budget, and runs shorter than T); else None."""
    if not config.match_repetition or config.token_budget is None:
        return None
    probe = config.proxy_train_config(Path("probe"), data="corpus")
    tokens = config.steps * probe.batch_size * probe.grad_accum * manifest.seq_len
    return tokens / config.token_budget if tokens < config.token_budget else None


def _claim(config: RegMixConfig, manifest: Manifest, corpus: str, members: list[dict], fraction, world) -> None:
    """Main process: the work directory checked and recorded, the subsampled corpus (repetition matched) and
    every run's mixture file written, and with --plan the runs' configs and runs.txt; all processes learn the
    outcome (a refusal stops every one of them)."""
    outcome = None
    if world.is_main:
        try:
            extra = swarm_record(config, manifest)
            if fraction is not None:  # the runs train on the subsample: its fraction defines them
                extra["subsample"] = {"token_budget": config.token_budget, "fraction": fraction}
            claim_work_dir(config, _legacy_swarm_json(config), keys=SWARM_KEYS, extra=extra)
            work = Path(members[0]["config"]["domain_weights"]).parent.parent
            if fraction is not None:
                subsample_corpus(corpus, manifest, work / SUBSAMPLE_DIR, fraction, config.seed)
            (work / "mixtures").mkdir(parents=True, exist_ok=True)
            domains = list(manifest.domains)
            for member in members:
                path = Path(member["config"]["domain_weights"])
                weights = DomainWeights(domains=domains, weights=corpus_weights(domains, member["mixture"]))
                if not path.is_file() or load_domain_weights(path).weights != weights.weights:
                    weights.write(path)
            if config.plan is not None:
                write_plan(members, work)
            outcome = ("ok", None)
        except MixweightError as exc:
            outcome = ("error", str(exc))
    outcome = broadcast_object(outcome, world)
    if outcome[0] == "error":
        raise MixweightError(outcome[1])


def _place(config: RegMixConfig, corpus: str, fraction) -> tuple[Path, str]:
    """(the work directory, the corpus the runs read): with --plan both absolute (a cluster's nodes read them),
    a URL corpus as the URL (each node fetches it); the subsample when repetition is matched."""
    work = config.resolved_work_dir()
    data = corpus
    if config.plan is not None:
        work = work.resolve()
        data = config.data if is_url(config.data) else str(Path(corpus).resolve())
    if fraction is not None:
        data = str(work / SUBSAMPLE_DIR)
    return work, data


def _run(config: RegMixConfig, world) -> DomainWeights | None:
    opened = start(config)  # the config and --out checked before any training, the corpus read
    corpus, manifest = opened.directory, opened.manifest
    if config.launcher in ("slurm", "ray") and world.distributed:
        raise MixweightError(
            f"weights regmix: --launcher {config.launcher} submits the runs from one process; run it without torchrun"
        )
    domains = list(manifest.domains)
    targets, train_domains, prior, caps = check_swarm(config, manifest)
    target_domains = targets or domains
    mixtures = regmix.sample_mixtures(prior, config.runs, config.concentration, config.seed)
    fraction = repetition_fraction(config, manifest)
    if fraction is not None and opened.remote is not None:  # its training shards are fetched as runs read them
        raise MixweightError(
            f"weights regmix: --token-budget trains the swarm on a subsample of every domain, written from all of "
            f"its training shards, and {opened.remote} is a corpus URL whose shards are fetched lazily: copy it to a "
            "local directory first, or pass --no-match-repetition"
        )
    work, data = _place(config, corpus, fraction)
    members = _members(config, data, work, domains, train_domains, target_domains, mixtures)
    if config.fit:  # too few finished runs to fit: refused before the work directory is claimed (nothing written)
        done = [i for i, m in enumerate(members) if finished(Path(m["config"]["out"]))]
        _refuse_too_few(members, done, train_domains)
    _claim(config, manifest, corpus, members, fraction, world)
    cached = sum(finished(Path(m["config"]["out"])) for m in members)
    if world.is_main:
        print(
            f"mixweight regmix: swarm of {config.runs} runs of {config.proxy} x {config.steps} steps "
            f"({cached} finished, {config.runs - cached} {'not' if config.fit else 'to train'}) in {work}",
            flush=True,
        )
        if fraction is not None:
            print(
                f"mixweight regmix: each swarm run trains on {fraction:.4g} of every domain (its tokens over "
                f"--token-budget), so it repeats each domain as a {config.token_budget:,}-token run would",
                flush=True,
            )
    if config.writes_plan_only():
        if world.is_main:
            print(
                f"mixweight regmix: planned {config.runs} runs: run line i of {work / 'runs.txt'} on your scheduler "
                f"(or --launcher slurm|ray), then this command with --fit --out FILE",
                flush=True,
            )
        barrier(world)
        return None
    if not config.fit:
        if config.launcher in ("slurm", "ray"):
            launch(config.launcher, members, work / config.launcher, config.launcher_options, config.retries, "regmix")
        else:
            train_swarm(members, world, work, config.show_progress())
    used = [i for i, m in enumerate(members) if finished(Path(m["config"]["out"]))]
    unfinished = [i for i in range(len(members)) if i not in used]
    if unfinished:
        _say_unfinished(members, used, unfinished, train_domains, world)

    # the fit: every process computes it (cheap, deterministic); the main one writes
    losses = {i: json.loads((Path(members[i]["config"]["out"]) / "eval.json").read_text())["domains"] for i in used}
    runs = [
        {"run": i, "weights": members[i]["mixture"], "losses": {d: losses[i][d]["loss"] for d in domains}} for i in used
    ]
    swarm = Swarm(domains, train_domains, target_domains, mixtures[used], runs)
    diverged = [used[i] for i, row in enumerate(swarm.y()) if not np.isfinite(row).all()]
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
    if unfinished:
        record["unfinished"] = unfinished
    if fraction is not None:
        record["subsample"] = {"fraction": fraction, "blocks_kept": load_manifest(data).source["blocks_kept"]}
    result = fit_swarm(config, swarm, prior, caps, record)
    repetition = repetition_block(config, domains, manifest.train_tokens(), result.weights)
    if repetition is not None:
        result.method["repetition"] = repetition
    result.targets = targets
    result.provenance = provenance(config, manifest, corpus)
    result.compute = runs_compute({f"run-{i:03d}": members[i]["config"]["out"] for i in used})
    write_artifact(result, config.out, manifest, plots=write_plots)
    barrier(world)  # no process reads the weights before the main one has written them
    return result


def _unfinished_names(members: list[dict], unfinished: list[int]) -> str:
    names = ", ".join(Path(members[i]["config"]["out"]).name for i in unfinished[:12])
    return names + (f" and {len(unfinished) - 12} more" if len(unfinished) > 12 else "")


def _refuse_too_few(members: list[dict], used: list[int], train_domains: list[str]) -> None:
    """Fewer finished runs than the training domains + 1: no regression, one line naming the unfinished runs."""
    if len(used) < len(train_domains) + 1:
        names = _unfinished_names(members, [i for i in range(len(members)) if i not in used])
        raise MixweightError(
            f"weights regmix: only {len(used)} of {len(members)} swarm runs have finished, the regression needs at "
            f"least {len(train_domains) + 1} (the training domains + 1); not finished: {names}"
        )


def _say_unfinished(members: list[dict], used: list[int], unfinished: list[int], train_domains: list[str], world):
    """--fit: the runs that have not finished, named; too few finished for a regression is refused."""
    _refuse_too_few(members, used, train_domains)
    names = _unfinished_names(members, unfinished)
    if world.is_main:
        print(
            f"mixweight regmix: {len(unfinished)} of {len(members)} swarm runs have not finished, fitting the "
            f"{len(used)} that have; not finished: {names}",
            flush=True,
        )
