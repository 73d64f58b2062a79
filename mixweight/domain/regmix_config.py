"""`weights regmix`'s options (RegMixConfig) and the checks that need the corpus, made before anything trains.

RegMixConfig is a ProxyMethodConfig (`mixweight.domain.proxy`): the swarm's and the fit's own options, and a
`train:` block that every swarm run's TrainConfig is built from. `check_swarm(config, manifest)` returns the
held-out targets, the training domains, the prior over them and the per-domain caps, or refuses (one line)
a target that is no domain, too few runs, or a repetition budget no mixture can meet.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Union

import numpy as np
import yaml

from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.data.manifest import Manifest
from mixweight.domain import regmix
from mixweight.domain.proxy import ProxyMethodConfig, check_target_domains
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.repetition import check_max_epochs, project_max_epochs

PRIORS = ("natural", "uniform")
LAUNCHERS = ("local", "slurm", "ray")
LAUNCH_KEYS = ("plan", "launcher", "launcher_options", "retries", "fit")  # where and how the runs are trained
LAUNCHER_EXTRAS = {"slurm": "submitit", "ray": "ray"}  # the package each launcher needs (and its extra's name)
# olmix's repetition factor (ConstraintsConfig.repetition_factor): the cap a token budget gets unless max_epochs is set
DEFAULT_MAX_EPOCHS = 4.0
# What defines the swarm's mixtures and runs, beyond each run's TrainConfig (which the trainer checks itself):
# a work directory belongs to one set of these. The other options (runs, regressor, kl_reg, fit_loss, token_budget
# and max_epochs when the runs are not subsampled to it) change only the fit, so changing them reuses the runs.
SWARM_KEYS = ("proxy", "steps", "seed", "prior", "concentration", "target")


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
        "the mixture the swarm is centred on, and the KL pull's anchor: natural (token counts; with --swarm-table "
        "and no --data, the table's mean mixture) or uniform",
    )
    concentration: float = _f(
        1.0, "Dirichlet concentration A of the swarm around the prior (larger: closer to it); times a random scale"
    )
    target: str = _f(
        "all",
        "what the mixture minimises: all (the mean validation loss over every domain) or DOMAIN[,DOMAIN] "
        "(held-out domains: weight 0 in every swarm run and in the result, their mean loss is the target; with "
        "--swarm-table: loss columns, which may be domains the swarm trained on)",
    )
    regressor: str = _f(
        "auto",
        "auto (power when the swarm holds 3 runs per parameter of it, 3 x (2 x domains + 1), else loglinear), "
        "loglinear (the data-mixing law per target domain), power (the log-linear law times a power of each "
        "domain's share) or lightgbm (RegMix's trees; the regmix extra)",
    )
    fit_loss: str = _f(
        "huber",
        "how a law is fitted: huber (olmix's fit: squared residuals within huber_delta, absolute beyond) or "
        "least_squares",
    )
    huber_delta: float = _f(0.02, "the Huber fit's threshold in nats of loss (olmix's 0.02)")
    kl_reg: float = _f(
        0.05,
        "pull toward the prior: the optimum minimises predicted loss + kl_reg * KL(w || prior) (olmix's 0.05; "
        "0 gives the unregularised optimum, one domain on RegMix's published swarm)",
    )
    token_budget: Optional[int] = _f(
        None,
        "tokens the main run will train on, T: caps each domain at max_epochs * tokens_d / T, and (with "
        "match_repetition) subsamples each swarm run's corpus to its share of T",
    )
    max_epochs: Optional[float] = _f(
        None,
        f"at most this many passes over any domain's training tokens within token_budget (needs token_budget; "
        f"default with it: {DEFAULT_MAX_EPOCHS:g}, olmix's repetition factor)",
    )
    match_repetition: bool = _f(
        True,
        "with token_budget: every swarm run trains on the same fraction of every domain, its tokens over T, so "
        "it repeats each domain as often as a T-token run on its mixture would (off: the whole corpus)",
    )
    swarm_table: Optional[list[str]] = _f(
        None,
        "fit a swarm trained elsewhere instead of training one: a mixtures CSV and a losses CSV in RegMix's "
        "layout (index, train_<domain> columns; index, metric/<domain>_val_loss columns) or olmix's (ratios.csv, "
        "metrics.csv joined on run); --data maps their domain names to the corpus's",
        values=("MIXTURES.csv", "LOSSES.csv"),
    )
    domain_map: Union[dict, str, None] = _f(
        None,
        "TABLE=CORPUS[,TABLE=CORPUS]: the corpus domain of a swarm-table domain that the automatic match misses "
        "(names equal; or equal ignoring case, punctuation and the table's common prefix such as the_pile_)",
    )
    plan: Optional[str] = _f(
        None,
        "write the swarm to DIR (its work directory): each run's mixture and full train config, and runs.txt "
        "(one `mixweight train` line per run); without --launcher nothing trains",
    )
    launcher: Optional[str] = _f(
        None,
        "who trains the swarm: local (this process, or a share in each torchrun process; the default), slurm "
        "(a submitit job array, one run per task; the submitit extra), ray (one Ray task per run; the ray extra)",
    )
    launcher_options: Union[dict, str, None] = _f(
        None,
        "KEY=VALUE[,KEY=VALUE] for the launcher: slurm, submitit's executor parameters (slurm_partition, "
        "timeout_min, gpus_per_node, cpus_per_task, slurm_array_parallelism, ...; cluster=local runs the array "
        "here); ray, address (default: a local instance over local_cpus CPUs), num_cpus, num_gpus per run",
    )
    retries: int = _f(2, "slurm, ray: times a failed run is started again (it resumes from its last checkpoint)")
    fit: bool = _f(False, "train nothing: fit the runs of the work directory that have finished, list the rest")

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
        regmix.check_fit_loss(self.fit_loss, self.huber_delta)
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
        elif self.token_budget is not None:
            self.max_epochs = DEFAULT_MAX_EPOCHS
        self.domain_map = key_values(self.domain_map, "domain_map", "TABLE=CORPUS")
        self.launcher_options = key_values(self.launcher_options, "launcher_options", "KEY=VALUE", typed=True)
        self._check_sources()

    def _check_sources(self) -> None:
        """Where the swarm comes from: a table, or runs mixweight trains (here, or through a launcher)."""
        if self.swarm_table is not None:
            require(
                len(self.swarm_table) == 2,
                f"weights regmix: 'swarm_table' must be two files, a mixtures CSV and a losses CSV, "
                f"got {self.swarm_table!r}",
            )
            given = [f"--{k.replace('_', '-')}" for k in ("plan", "launcher", "fit") if getattr(self, k)]
            require(
                not given,
                f"weights regmix: --swarm-table fits a swarm trained elsewhere; {', '.join(given)} belong to a swarm "
                "mixweight trains: leave them out",
            )
        require(
            self.launcher is None or self.launcher in LAUNCHERS,
            f"weights regmix: 'launcher' must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}; "
            f"{did_you_mean(str(self.launcher), LAUNCHERS)}",
        )
        require(self.retries >= 0, f"weights regmix: 'retries' must be >= 0, got {self.retries}")
        require(
            not (self.fit and self.launcher),
            "weights regmix: --fit trains nothing, so it takes no --launcher: fit once the runs have finished",
        )
        require(
            self.plan is None or self.work_dir is None or Path(self.plan) == Path(self.work_dir),
            f"weights regmix: --plan {self.plan} is the swarm's work directory; --work-dir {self.work_dir} names "
            "another: give one of them",
        )
        package = LAUNCHER_EXTRAS.get(self.launcher or "")
        if package is not None and importlib.util.find_spec(package) is None:
            raise MixweightError(
                f"weights regmix: --launcher {self.launcher} needs {package}, which is not installed; "
                f'pip install -e ".[{package}]" (or pip install {package})'
            )

    def require_paths(self) -> None:
        """--data (but with --swarm-table) and --out (but when a plan is only written) are required."""
        require(
            self.data is not None or self.swarm_table is not None,
            f"{self.COMMAND}: --data is required (a corpus directory), or --swarm-table MIXTURES.csv LOSSES.csv",
        )
        require(
            self.out is not None or self.writes_plan_only(),
            f"{self.COMMAND}: --out is required (the weights JSON file to write)",
        )

    def writes_plan_only(self) -> bool:
        return self.plan is not None and self.launcher is None and not self.fit

    def resolved_work_dir(self) -> Path:
        return Path(self.plan) if self.plan is not None else super().resolved_work_dir()

    def show_progress(self) -> bool:
        """The swarm's progress bar (the train block's `progress`); the runs themselves show none.
        (Not a `progress` attribute: that name is the deprecated flat key, which dataclasses.replace passes on.)"""
        return bool(self.train.get("progress", True))

    def options(self) -> dict:
        """The method's options but those that say where and how the swarm is run (they change no weights, so
        the artifact's config hash leaves them out, as it leaves out work_dir)."""
        return {k: v for k, v in super().options().items() if k not in LAUNCH_KEYS}

    def input_files(self) -> list[str]:
        """Files whose content is part of the config (the swarm table): a pipeline keys its stage on them."""
        return list(self.swarm_table or [])


def key_values(value, key: str, form: str, typed: bool = False) -> dict | None:
    """A {key: value} option given as a mapping (YAML) or as `K=V,K=V` (a flag); `typed`: values read as YAML
    scalars (numbers, booleans), else kept as text."""
    if value is None or isinstance(value, dict):
        return value
    pairs = {}
    for item in str(value).split(","):
        name, sep, text = item.partition("=")
        require(
            bool(sep and name.strip() and text.strip()),
            f"weights regmix: '{key}' must be {form}[,{form}], got {value!r}",
        )
        pairs[name.strip()] = yaml.safe_load(text.strip()) if typed else text.strip()
    return pairs


# --- targets, prior, caps (they need the corpus) ---------------------------------------------------
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


def check_swarm(config: RegMixConfig, manifest: Manifest) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None]:
    """The checks that need the corpus (targets, enough runs, a feasible repetition budget), before anything
    trains; returns (held-out targets, training domains, the prior over them, the caps or None). With a swarm
    table: the table read and mapped to the corpus (regmix_byo)."""
    if config.swarm_table is not None:
        from mixweight.domain.regmix_byo import table_swarm

        swarm, prior, caps, _ = table_swarm(config, manifest)
        held = [t for t in swarm.target_domains if t in swarm.domains and t not in swarm.train_domains]
        return held, swarm.train_domains, prior, caps
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
