"""`mixweight weights regmix`: a swarm of small proxy runs on sampled mixtures -> a regression -> the best mixture.

    RegMixConfig -> corpus, targets, prior (natural | uniform over the training domains)
      -> K mixtures (regmix.sample_mixtures: the prior, uniform, Dirichlet draws around the prior)
      -> one ordinary training run per mixture (`mixweight.domain.proxy.train_or_reuse`, a
         TrainConfig whose domain_weights is the run's mixture file), each run's eval.json
      -> fit the target loss (mean validation loss over the target domains) on the mixtures,
         leave-one-out Spearman and MAE of the fit
      -> the mixture of lowest predicted target loss (within --max-epochs of a --token-budget,
         pulled toward the prior by --kl-reg) -> domain_weights.json + two plots

The work directory (default `<out stem>.work/` beside `out`) holds `mixtures/run-NNN.json`
and `runs/run-NNN/`: each run is cached on its own, so a rerun trains only the runs that are
missing and resumes an interrupted one. Mixture i depends on (seed, i) alone, so raising
--runs keeps the finished runs. `regmix_config.yaml` (`proxy.claim_work_dir`) records the
options that define the runs (SWARM_KEYS, the train block but its checkpoint keys, the proxy
spec, the corpus); a work directory made with other ones is refused, naming them.

Under torchrun with P processes, process p trains runs p, p + P, ... as single-process runs
in a child process of its own (no process group, its own device), so nothing is communicated
while training; every process watches the eval.json files while its child trains and until all
exist (the main process prints the whole swarm's finished count and an ETA as it changes), and
the main process fits and writes. The artifact holds no paths or timings: the same seed and config give the same
bytes, whatever the process count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
from tqdm.auto import tqdm

from mixweight.core.artifact import DomainWeights, corpus_weights, load_domain_weights
from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.core.distributed import barrier, broadcast_object, close_world, init_world
from mixweight.core.jsonio import write_json_atomic
from mixweight.core.model import load_spec
from mixweight.data.manifest import Manifest
from mixweight.domain import regmix
from mixweight.domain.proxy import (
    UNHASHED,
    ProxyMethodConfig,
    check_target_domains,
    claim_work_dir,
    effective_train_block,
    provenance,
    start,
    write_artifact,
)
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.repetition import check_max_epochs, planned_epochs, project_max_epochs
from mixweight.train.config import TrainConfig

PRIORS = ("natural", "uniform")
SWARM_FILE = "swarm.json"  # the record of a work directory made before regmix_config.yaml
# What defines the swarm's mixtures and runs, beyond each run's TrainConfig (which the trainer checks itself):
# a work directory belongs to one set of these. The other options (runs, regressor, kl_reg, token_budget,
# max_epochs) change only the fit, so changing them reuses the runs.
SWARM_KEYS = ("proxy", "steps", "seed", "prior", "concentration", "target")
POOR_FIT_SPEARMAN = 0.5  # below this held-out rank correlation, the artifact warns that the fit ranks poorly
# Below this many runs per parameter of a log-linear law (m + 1 with m training domains), the artifact warns: on the
# synthetic corpus such fits ranked unseen mixtures poorly while their leave-one-out Spearman looked good
# (benchmarks/RESULTS.md, regmix_rank.py).
RUNS_PER_PARAMETER = 3
POLL_SECONDS = 2.0
CHILD_ENV_DROP = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@dataclass
class RegMixConfig(ProxyMethodConfig):
    """`weights regmix`: the swarm's and the fit's options; every swarm run's TrainConfig is the train block."""

    COMMAND: ClassVar[str] = "weights regmix"
    NAME: ClassVar[str] = "regmix"
    # Small, short runs: the swarm's defaults where they differ from TrainConfig's.
    TRAIN_DEFAULTS: ClassVar[dict] = {
        "eval_every": 0,
        "batch_size": 16,
        "lr": 3e-3,
        "final_lr": 3e-4,
        "warmup_steps": 5,
        "eval_blocks": 16,
        "checkpoint_every": 1000,
        "keep_checkpoints": 1,
    }

    proxy: str = _f("gpt2-micro", "model spec of every swarm run (a name in proxies/ or an HF config JSON)")
    steps: int = _f(60, "optimizer steps of each swarm run")
    seed: int = _f(0, "seed of the mixtures, of every swarm run's init and data order, and of the search")
    work_dir: Optional[str] = _f(None, "directory of the swarm's runs (default: <out stem>.work/ beside out)")
    log_every: int = _f(10, "write each swarm run's training metrics every N steps")
    runs: int = _f(
        24,
        "swarm size K: proxy runs, one per sampled mixture (at least the training domains + 1; RegMix trains 512)",
    )
    prior: str = _f(
        "natural",
        "the mixture the swarm is centred on, and the KL pull's anchor: natural (token counts) or uniform",
    )
    concentration: float = _f(
        1.0, "Dirichlet concentration A of the swarm around the prior (larger: closer to it); times a random scale"
    )
    target: str = _f(
        "all",
        "what the mixture minimises: all (the mean validation loss over every domain) or DOMAIN[,DOMAIN] "
        "(held-out domains: weight 0 in every swarm run and in the result, their mean loss is the target)",
    )
    regressor: str = _f("loglinear", "loglinear (the data-mixing law, per target domain) or lightgbm (RegMix)")
    kl_reg: float = _f(0.0, "pull toward the prior: the optimum minimises predicted loss + kl_reg * KL(w || prior)")
    token_budget: Optional[int] = _f(
        None, "tokens the main run will train on, T (with max_epochs: caps each domain at E * tokens_d / T)"
    )
    max_epochs: Optional[float] = _f(
        None, "at most this many passes over any domain's training tokens within token_budget (needs token_budget)"
    )

    def check_options(self) -> None:
        require(self.runs > 0, f"weights regmix: 'runs' must be a positive integer, got {self.runs}")
        require(
            self.prior in PRIORS,
            f"weights regmix: 'prior' must be natural or uniform, got {self.prior!r}; "
            f"{did_you_mean(self.prior, PRIORS)}",
        )
        require(
            self.concentration > 0 and math.isfinite(self.concentration),
            f"weights regmix: 'concentration' must be > 0, got {self.concentration}",
        )
        regmix.check_regressor(self.regressor)
        if self.regressor == "lightgbm":
            regmix.require_lightgbm()  # refused now, not after the swarm has trained
        require(
            self.kl_reg >= 0 and math.isfinite(self.kl_reg),
            f"weights regmix: 'kl_reg' must be >= 0, got {self.kl_reg}",
        )
        require(
            all(t.strip() for t in self.target.split(",")),
            f"weights regmix: 'target' must be all or comma-separated domain names, got {self.target!r}",
        )
        require(
            self.token_budget is None or self.token_budget > 0,
            f"weights regmix: 'token_budget' must be a positive number of tokens, got {self.token_budget}",
        )
        if self.max_epochs is not None:
            check_max_epochs(self.max_epochs, "weights regmix")
            require(
                self.token_budget is not None,
                "weights regmix: --max-epochs needs --token-budget T (the tokens the main run will train on: "
                "steps x global batch x seq_len)",
            )

    def show_progress(self) -> bool:
        """The swarm's progress bar (the train block's `progress`); the runs themselves show none.
        (Not a `progress` attribute: that name is the deprecated flat key, which dataclasses.replace passes on.)"""
        return bool(self.train.get("progress", True))


# --- targets, prior, caps -------------------------------------------------------------------
def held_out_targets(target: str, domains: list[str]) -> list[str]:
    """[] for `all`, else the named domains (checked against the corpus)."""
    if target.strip() == "all":
        return []
    names = [t.strip() for t in target.split(",")]
    check_target_domains("weights regmix", names, domains, also="all")
    return sorted(set(names), key=domains.index)


def prior_weights(manifest: Manifest, train_domains: list[str], kind: str) -> np.ndarray:
    if kind == "uniform":
        return np.full(len(train_domains), 1.0 / len(train_domains))
    tokens = np.array([manifest.splits["train"][d].tokens for d in train_domains], dtype=np.float64)
    return tokens / tokens.sum()


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


# --- the swarm ------------------------------------------------------------------------------
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


def _finished(run_dir: Path) -> bool:
    return (run_dir / "eval.json").is_file()


def _run_line(index: int, total: int, losses: dict, targets: list[str], seconds: float | None, mixture: dict) -> str:
    target = float(np.mean([losses[d]["loss"] for d in targets]))
    mix = ", ".join(f"{d} {w:.2f}" for d, w in mixture.items() if w > 0)
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    return f"mixweight regmix: run {index + 1}/{total} done{took}: target loss {target:.4f} ({mix})"


def train_share(members: list[dict], indices: list[int], total: int, progress: bool, label: str = "") -> None:
    """Train (or resume, or reuse) the swarm runs `indices` in this process, one after the other.

    `members[i]` holds run i's TrainConfig fields, its mixture and its target domains. A run's
    own output goes to `<work>/logs/run-NNN.log`; one line per finished run here.
    """
    from mixweight.domain.proxy import train_or_reuse

    pending = [i for i in indices if not _finished(Path(members[i]["config"]["out"]))]
    bar = tqdm(
        total=len(indices),
        initial=len(indices) - len(pending),
        disable=not progress or None,
        desc=f"regmix swarm{label}",
        unit="run",
        dynamic_ncols=True,
    )
    for i in pending:
        member = members[i]
        config = TrainConfig(**member["config"])
        log = Path(member["log"])
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log.open("a") as handle, contextlib.redirect_stdout(handle):
            _train_with_retries(train_or_reuse, config)
        losses = json.loads((Path(config.out) / "eval.json").read_text())["domains"]
        line = _run_line(i, total, losses, member["targets"], time.perf_counter() - started, member["mixture"])
        bar.update(1)
        tqdm.write(line + label, file=sys.stdout)
        sys.stdout.flush()
    bar.close()


def _train_with_retries(train_or_reuse, config: TrainConfig, attempts: int = 5) -> None:
    """One swarm run. Swarm processes on one machine build their mosaicml-streaming datasets at the same
    moments, and streaming's choice of a free shared-memory prefix is not atomic across independent
    processes: two may pick the same one, and the second then fails with FileExistsError on creating it.
    Nothing is trained by then (the dataset is built before the first step), so the run is started again."""
    for attempt in range(attempts):
        try:
            train_or_reuse(config)
            return
        except FileExistsError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _child_env(local_rank: int) -> dict:
    """The environment of a swarm worker: no torchrun world (each run is a single-process run), one device."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP and not k.startswith("TORCHELASTIC_")}
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = devices[local_rank % len(devices)]
    return env


def _train_swarm(members: list[dict], world, work: Path, progress: bool) -> None:
    total = len(members)
    if not world.distributed:
        train_share(members, list(range(total)), total, progress)
        return
    # torchrun: this process's share, trained in a child with no process group (a world of one)
    plan = work / "swarm_members.json"
    if world.is_main:
        write_json_atomic(plan, members)
    barrier(world)
    share = list(range(world.rank, total, world.size))
    command = [sys.executable, "-m", "mixweight.domain.regmix_run", str(plan), ",".join(map(str, share))]
    command.append(f" [process {world.rank}]")
    child = subprocess.Popen(command, env=_child_env(world.local_rank))
    runs = [Path(m["config"]["out"]) for m in members]
    code = watch_swarm(child, runs, world.is_main, world.is_main and progress)
    if code != 0:
        raise MixweightError(
            f"weights regmix: process {world.rank}'s swarm runs {share} failed (exit code {code}); "
            "the error is printed above; rerun the same command to continue the swarm"
        )


def watch_swarm(child, runs: list[Path], report: bool, bar: bool, poll: float = POLL_SECONDS) -> int:
    """While this process's child trains its share, and after it until every run of every process has its
    eval.json: with `report` (the main process), one line per change in the whole swarm's finished count
    with an ETA, and the whole-swarm bar with `bar`. Returns the child's exit code (at once on a failure)."""
    total = len(runs)
    done = sum(_finished(r) for r in runs)
    first, started = done, time.perf_counter()
    shown = tqdm(total=total, initial=done, disable=not bar or None, desc="regmix swarm", unit="run")
    code = None
    try:
        while True:  # the other processes' results come through the filesystem, nothing is communicated
            if code is None:
                code = child.poll()
                if code is not None and code != 0:
                    return code
            now = sum(_finished(r) for r in runs)
            if now != done:
                done = now
                shown.update(done - shown.n)
                if report:
                    rate = (time.perf_counter() - started) / max(done - first, 1)
                    eta = f", about {rate * (total - done):.0f}s left" if done < total else ""
                    tqdm.write(f"mixweight regmix: swarm progress: {done}/{total} runs finished{eta}", file=sys.stdout)
                    sys.stdout.flush()
            if done == total and code is not None:
                return code
            if done == total:  # every run finished: the child is exiting
                return child.wait()
            time.sleep(poll)
    except BaseException:  # interrupted: the child's run would go on training unwatched
        if child.poll() is None:
            child.terminate()
        raise
    finally:
        shown.close()


# --- the result -------------------------------------------------------------------------------
def _fit_block(config: RegMixConfig, model, x: np.ndarray, y: np.ndarray) -> dict:
    observed = y.mean(axis=1)
    in_sample = regmix.fit_statistics(model.predict(x), observed)
    held_out = regmix.cross_validate(config.regressor, x, y, config.seed)
    block = {
        "regressor": config.regressor,
        "target_domains": None,  # filled by the caller
        "in_sample": in_sample,
        "cross_validation": held_out,
    }
    if isinstance(model, regmix.LogLinear):
        block["laws"] = model.params
    return block


def _repetition(config: RegMixConfig, manifest: Manifest, weights: list[float]) -> dict | None:
    if config.token_budget is None:
        return None
    tokens = manifest.train_tokens()
    if config.max_epochs is None:
        epochs = planned_epochs(dict(zip(manifest.domains, weights)), tokens, config.token_budget)
        return {"token_budget": config.token_budget, "max_epochs": None, "epochs": epochs}
    projection = project_max_epochs(
        list(manifest.domains),
        weights,
        [tokens[d] for d in manifest.domains],
        config.max_epochs,
        config.token_budget,
        "weights regmix",
    )
    return projection.as_dict()


def run_regmix(config: RegMixConfig) -> DomainWeights:
    """Train (or continue) the swarm, fit, optimise, and write the weights artifact to `config.out`."""
    world = init_world()  # the command's process group under torchrun (or one of our own, closed at the end)
    try:
        return _run(config, world)
    finally:
        close_world(world)


def check_swarm(config: RegMixConfig, manifest: Manifest) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None]:
    """The checks that need the corpus (targets, enough runs, a feasible repetition budget), before anything
    trains; returns (held-out targets, training domains, the prior over them, the caps or None)."""
    domains = list(manifest.domains)
    targets = held_out_targets(config.target, domains)
    train_domains = [d for d in domains if d not in targets]
    if config.runs < len(train_domains) + 1:
        raise MixweightError(
            f"weights regmix: --runs {config.runs} is too few for {len(train_domains)} training domains: the "
            f"regression needs at least {len(train_domains) + 1} runs (the domains + 1; RegMix trains hundreds)"
        )
    prior = prior_weights(manifest, train_domains, config.prior)
    tokens = manifest.train_tokens()
    caps = None
    if config.max_epochs is not None:  # an impossible budget is refused before anything trains
        project_max_epochs(
            train_domains,
            prior.tolist(),
            [tokens[d] for d in train_domains],
            config.max_epochs,
            config.token_budget,
            "weights regmix",
        )
        caps = np.array([config.max_epochs * tokens[d] / config.token_budget for d in train_domains])
    return targets, train_domains, prior, caps


def _run(config: RegMixConfig, world) -> DomainWeights:
    opened = start(config)  # the config and --out checked before any training, the corpus read
    corpus, manifest = opened.directory, opened.manifest
    domains = list(manifest.domains)
    targets, train_domains, prior, caps = check_swarm(config, manifest)
    target_domains = targets or domains
    mixtures = regmix.sample_mixtures(prior, config.runs, config.concentration, config.seed)
    work = config.resolved_work_dir()
    members = []
    for i, row in enumerate(mixtures):
        by_name = dict(zip(train_domains, row.tolist()))
        members.append(
            {
                "config": dataclasses.asdict(member_config(config, corpus, work, i)),
                "mixture": {d: by_name.get(d, 0.0) for d in domains},
                "targets": target_domains,
                "log": str(work / "logs" / f"run-{i:03d}.log"),
            }
        )
    outcome = None
    if world.is_main:
        try:
            claim_work_dir(config, _legacy_swarm_json(config), keys=SWARM_KEYS, extra=swarm_record(config, manifest))
            (work / "mixtures").mkdir(parents=True, exist_ok=True)
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
    cached = sum(_finished(Path(m["config"]["out"])) for m in members)
    if world.is_main:
        print(
            f"mixweight regmix: swarm of {config.runs} runs of {config.proxy} x {config.steps} steps "
            f"({cached} finished, {config.runs - cached} to train) in {work}",
            flush=True,
        )
    _train_swarm(members, world, work, config.show_progress())

    # the fit: every process computes it (cheap, deterministic); the main one writes
    losses = [json.loads((Path(m["config"]["out"]) / "eval.json").read_text())["domains"] for m in members]
    x = mixtures
    y = np.array([[run[d]["loss"] for d in target_domains] for run in losses], dtype=np.float64)
    diverged = [i for i in range(len(y)) if not np.isfinite(y[i]).all()]
    if diverged:
        raise MixweightError(
            f"weights regmix: swarm run(s) {diverged} ended with a non-finite validation loss on a target domain, "
            f"so no regression can use them; lower train.lr (or raise train.warmup_steps) and remove "
            f"{work / 'runs'}/run-NNN of those runs to train them again"
        )
    model = regmix.make_regressor(config.regressor, config.seed).fit(x, y)
    fit = _fit_block(config, model, x, y)
    fit["target_domains"] = target_domains
    best_observed = int(np.argmin(y.mean(axis=1)))
    chosen = regmix.optimise(model, prior, caps=caps, kl_reg=config.kl_reg, seed=config.seed, starts=x[best_observed])
    weights = corpus_weights(domains, dict(zip(train_domains, chosen.tolist())))
    predicted = {
        "chosen": float(model.predict(chosen)[0]),
        "prior": float(model.predict(prior)[0]),
        "best_swarm_run": float(model.predict(x[best_observed])[0]),
    }
    swarm = [
        {
            "run": i,
            "weights": members[i]["mixture"],
            "losses": {d: run[d]["loss"] for d in domains},
            "target_loss": float(y[i].mean()),
        }
        for i, run in enumerate(losses)
    ]
    method = {
        "name": "regmix",
        "runs": config.runs,
        "steps": config.steps,
        "proxy": config.proxy,
        "train": {k: v for k, v in effective_train_block(config).items() if k not in UNHASHED},
        "prior": config.prior,
        "prior_weights": dict(zip(train_domains, prior.tolist())),
        "concentration": config.concentration,
        "target": config.target,
        "regressor": config.regressor,
        "kl_reg": config.kl_reg,
        "token_budget": config.token_budget,
        "max_epochs": config.max_epochs,
        "predicted_target_loss": predicted,
        "best_swarm_run": {"run": best_observed, "target_loss": float(y[best_observed].mean())},
        "fit": fit,
        "swarm": swarm,
    }
    repetition = _repetition(config, manifest, weights)
    if repetition is not None:
        method["repetition"] = repetition
    result = DomainWeights(
        domains=domains,
        weights=weights,
        last_weights=None,
        method=method,
        targets=targets,
        provenance=provenance(config, manifest, corpus),
    )
    result.warnings = fit_warnings(config, fit, len(train_domains), target_domains)
    if world.is_main:
        cv = fit["cross_validation"]
        print(
            f"mixweight regmix: {config.regressor} fit over {config.runs} runs: {cv['method']} Spearman "
            f"{cv['spearman']:.3f}, mean absolute error {cv['mae']:.4f} (in-sample Spearman "
            f"{fit['in_sample']['spearman']:.3f}, MAE {fit['in_sample']['mae']:.4f}); predicted target loss: "
            f"chosen {predicted['chosen']:.4f}, prior {predicted['prior']:.4f}, best swarm run "
            f"{predicted['best_swarm_run']:.4f} (observed {y[best_observed].mean():.4f})",
            flush=True,
        )
    write_artifact(result, config.out, manifest, plots=write_plots)
    barrier(world)  # no process reads the weights before the main one has written them
    return result


def fit_warnings(config: RegMixConfig, fit: dict, train_domains: int, target_domains: list[str]) -> list[dict]:
    """`small-swarm` (log-linear with fewer than RUNS_PER_PARAMETER runs per parameter) and `poor-fit`
    (held-out Spearman below POOR_FIT_SPEARMAN), each {code, step (the swarm size), domains, message}."""
    found = []
    cv = fit["cross_validation"]
    needed = RUNS_PER_PARAMETER * (train_domains + 1)
    if config.regressor == "loglinear" and config.runs < needed:
        found.append(
            {
                "code": "small-swarm",
                "step": config.runs,
                "domains": target_domains,
                "message": (
                    f"{config.runs} runs for a law with {train_domains + 1} parameters per target domain: with fewer "
                    f"than {RUNS_PER_PARAMETER}x as many runs ({needed}) the fit nearly interpolates the swarm, its "
                    f"{cv['method']} Spearman ({cv['spearman']:.2f}) is optimistic and the chosen mixture can be worse "
                    "than the prior; use more --runs"
                ),
            }
        )
    if not (cv["spearman"] >= POOR_FIT_SPEARMAN):
        found.append(
            {
                "code": "poor-fit",
                "step": config.runs,
                "domains": target_domains,
                "message": (
                    f"the {config.regressor} fit ranks held-out swarm runs poorly ({cv['method']} Spearman "
                    f"{cv['spearman']:.2f} < {POOR_FIT_SPEARMAN}): the chosen mixture is a weak guess; usual remedies: "
                    "more --runs, more --steps per run, more eval blocks (train.eval_blocks)"
                ),
            }
        )
    return found


# --- replay and plots --------------------------------------------------------------------------
def _number(value, where: str, field: str, positive: bool = False) -> float:
    """A finite number (> 0 with `positive`), else one line naming the file and the field."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or isinstance(value, bool) or not math.isfinite(number) or (positive and number <= 0):
        need = "a positive finite number" if positive else "a finite number"
        raise MixweightError(f"{where}: {field} is {value!r}, expected {need}")
    return number


def _mapping(value, where: str, field: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise MixweightError(f"{where}: {field} must be a non-empty {{domain: number}} mapping, got {value!r}")
    return value


def replay_weights(artifact: DomainWeights, where: str = "regmix artifact") -> list[float]:
    """The weights refitted and re-optimised from the artifact's own swarm table (for `weights verify`).

    Every field the refit reads is checked first: an edited file is one MixweightError line naming `where`
    (the file) and the field, never a traceback."""
    method = artifact.method
    prior_map = _mapping(method.get("prior_weights"), where, "method.prior_weights")
    train_domains = list(prior_map)
    unknown = [d for d in train_domains if d not in artifact.domains]
    if unknown:
        raise MixweightError(f"{where}: method.prior_weights names {unknown}, not domains of the file")
    # positive: the KL pull divides by the prior (a zero or negative one gave a RuntimeWarning and a verdict)
    prior = np.array([_number(prior_map[d], where, f"method.prior_weights.{d}", positive=True) for d in train_domains])
    fit = method.get("fit")
    if not isinstance(fit, dict):
        raise MixweightError(f"{where}: method.fit must be a mapping (the regression's record), got {fit!r}")
    targets = fit.get("target_domains")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise MixweightError(f"{where}: method.fit.target_domains must be a non-empty list of domain names")
    regressor = fit.get("regressor")
    if regressor not in regmix.REGRESSORS:
        raise MixweightError(
            f"{where}: method.fit.regressor is {regressor!r}, expected one of {', '.join(regmix.REGRESSORS)}"
        )
    swarm = method.get("swarm")
    needed = len(train_domains) + 1
    if not isinstance(swarm, list) or len(swarm) < needed:
        got = f"{len(swarm)} runs" if isinstance(swarm, list) else repr(swarm)
        raise MixweightError(
            f"{where}: method.swarm must be a list of at least {needed} runs (the training domains + 1), got {got}"
        )
    x, y = [], []
    for i, run in enumerate(swarm):
        if not isinstance(run, dict):
            raise MixweightError(f"{where}: method.swarm[{i}] must be a mapping (weights, losses), got {run!r}")
        mix = _mapping(run.get("weights"), where, f"method.swarm[{i}].weights")
        losses = _mapping(run.get("losses"), where, f"method.swarm[{i}].losses")
        for name, source, wanted in (("weights", mix, train_domains), ("losses", losses, targets)):
            missing = [d for d in wanted if d not in source]
            if missing:
                raise MixweightError(f"{where}: method.swarm[{i}].{name} lacks {missing}")
        x.append([_number(mix[d], where, f"method.swarm[{i}].weights.{d}") for d in train_domains])
        y.append([_number(losses[d], where, f"method.swarm[{i}].losses.{d}") for d in targets])
    x, y = np.array(x), np.array(y)
    seed = artifact.provenance.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MixweightError(f"{where}: provenance.seed is {seed!r}, expected an integer")
    kl_reg = _number(method.get("kl_reg", 0.0), where, "method.kl_reg")
    if kl_reg < 0:
        raise MixweightError(f"{where}: method.kl_reg is {kl_reg}, expected >= 0")
    caps = None
    max_epochs = method.get("max_epochs")
    if max_epochs is not None:
        epochs = _number(max_epochs, where, "method.max_epochs", positive=True)
        if method.get("token_budget") is None:
            raise MixweightError(f"{where}: method.max_epochs is set but method.token_budget is missing (it needs T)")
        budget = _number(method["token_budget"], where, "method.token_budget", positive=True)
        tokens = artifact.provenance.get("domain_token_counts")
        if not isinstance(tokens, dict) or any(d not in tokens for d in train_domains):
            raise MixweightError(
                f"{where}: method.max_epochs needs provenance.domain_token_counts for every training domain "
                f"({', '.join(train_domains)}), got {tokens!r}"
            )
        counts = [_number(tokens[d], where, f"provenance.domain_token_counts.{d}") for d in train_domains]
        caps = np.array([epochs * c / budget for c in counts])
        if caps.sum() < 1.0:
            raise MixweightError(
                f"{where}: method.max_epochs {epochs:g} over method.token_budget {budget:g} allows only "
                f"{caps.sum():.3g} of the mixture (caps must sum to at least 1)"
            )
    try:
        model = regmix.make_regressor(regressor, int(seed)).fit(x, y)
        best = int(np.argmin(y.mean(axis=1)))
        chosen = regmix.optimise(model, prior, caps=caps, kl_reg=kl_reg, seed=int(seed), starts=x[best])
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise MixweightError(f"{where}: its swarm table cannot be refitted ({type(exc).__name__}: {exc})") from None
    return corpus_weights(artifact.domains, dict(zip(train_domains, chosen.tolist())))


def write_plots(weights: DomainWeights, out: Path) -> None:
    """Beside the artifact: `<stem>_fit.png` (held-out predicted vs observed target loss per swarm run) and
    `<stem>_bars.png` (the chosen mixture beside the prior the swarm was centred on)."""
    from mixweight.domain.plots import plot_regmix_fit, plot_weights_vs_natural

    plot_regmix_fit(weights.method, out.with_name(f"{out.stem}_fit.png"))
    prior = weights.method.get("prior_weights", {})
    label = f"prior ({weights.method.get('prior')})"
    plot_weights_vs_natural(weights, prior, out.with_name(f"{out.stem}_bars.png"), label=label)


def _worker(argv: list[str]) -> None:
    """`python -m mixweight.domain.regmix_run PLAN INDICES LABEL`: one process's share of a swarm (torchrun)."""
    plan, indices, label = argv[0], [int(i) for i in argv[1].split(",") if i], argv[2] if len(argv) > 2 else ""
    members = json.loads(Path(plan).read_text())
    try:
        train_share(members, indices, len(members), progress=False, label=label)
    except MixweightError as exc:
        print(f"mixweight: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _worker(sys.argv[1:])
