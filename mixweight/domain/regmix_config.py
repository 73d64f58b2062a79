"""`weights regmix`'s options (RegMixConfig) and the checks that need the corpus, made before anything trains.

RegMixConfig is a ProxyMethodConfig (`mixweight.domain.proxy`): the swarm's and the fit's own options, and a
`train:` block that every swarm run's TrainConfig is built from. `check_swarm(config, manifest)` returns the
held-out targets, the training domains, the prior over them and the per-domain caps, or refuses (one line)
a target that is no domain, too few runs, or a repetition budget no mixture can meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.data.manifest import Manifest
from mixweight.domain import regmix
from mixweight.domain.proxy import ProxyMethodConfig, check_target_domains
from mixweight.errors import MixweightError, did_you_mean
from mixweight.sampling.repetition import check_max_epochs, project_max_epochs

PRIORS = ("natural", "uniform")
# What defines the swarm's mixtures and runs, beyond each run's TrainConfig (which the trainer checks itself):
# a work directory belongs to one set of these. The other options (runs, regressor, kl_reg, token_budget,
# max_epochs) change only the fit, so changing them reuses the runs.
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
