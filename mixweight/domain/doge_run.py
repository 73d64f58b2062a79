"""`mixweight weights doge`: train a DoGE proxy and write `domain_weights.json`.

    DoGEConfig -> check --out and the targets against the corpus -> fill in the published
    defaults for the target kind (mu, max_grad_norm) -> train the proxy (the training loop with a
    DoGEObjective, uniform sampling over every domain, targets included) -> artifact

The artifact lists every corpus domain (held-out targets at weight 0, named in `targets`), so
`train --domain-weights` takes it as it is, and holds the `replay` block from which
`mixweight.domain.doge.replay` recomputes every step's weights.

The proxy run lives in a work directory (default `<out stem>.work/` beside `out`) and goes
through the proxy runner (`mixweight.domain.proxy`): reused when finished with the same config,
resumed from its newest checkpoint when interrupted. What is DoGE's own: the targets and the
published defaults, the `DoGEObjective`, and the final weights rule (the normalized average of
alpha over the training domains, targets at 0). The artifact holds no paths of the runs or
timings, so the same seed and config give a byte-identical file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mixweight.core.artifact import DomainWeights, corpus_weights
from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.domain.doge import IMPLS, DoGEObjective, published_defaults, replay, resolve_target
from mixweight.domain.doge_update import SCORES
from mixweight.domain.health import weight_warnings
from mixweight.domain.proxy import (
    MOVED_TRAIN_KEYS,
    ProxyMethodConfig,
    check_target_domains,
    claim_work_dir,
    provenance,
    runs_compute,
    start,
    train_or_reuse,
    write_artifact,
)
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

PROXY_EVAL_BLOCKS = 16  # the proxy's final per-domain evaluation: informative only
RENAMED_SCORE = "normalized-clipped"  # an earlier score that claimed to be the official code's form
PROXY_GRAD_CLIP = 1.0  # the applied gradient's clip for score paper (every mixweight run's default)
LEGACY_STAMP = "doge_config_hash"  # an older mixweight's work-directory stamp: a 16-hex hash of the flat config


@dataclass
class DoGEConfig(ProxyMethodConfig):
    """`weights doge`: the method's options; the proxy run's TrainConfig is the train block."""

    COMMAND: ClassVar[str] = "weights doge"
    NAME: ClassVar[str] = "doge"
    TRAIN_DEFAULTS: ClassVar[dict] = {"batch_size": 16, "eval_every": 0, "eval_blocks": PROXY_EVAL_BLOCKS}
    TRAIN_DEFAULT_NOTES: ClassVar[dict] = {"grad_clip": f"max_grad_norm with score reference, else {PROXY_GRAD_CLIP}"}

    out: str = _f(None, "the domain weights file to write (domain_weights.json); required")
    steps: int = _f(200, "proxy optimizer steps")
    seed: int = _f(0, "seed for proxy init and data order")
    work_dir: str = _f(None, "directory for the proxy run and its checkpoints (default: <out stem>.work/ beside out)")
    log_every: int = _f(10, "record the weights and scores in the trajectory (and metrics) every N steps")
    target: str = _f(
        "mix",
        "mix (the published universal setting: a held-out mixture of the training domains, "
        "1 in k+1 blocks chosen by a hash of their tokens, never trained on), all (the paper's "
        "universal form: the other training domains, self term excluded) or DOMAIN[,DOMAIN] "
        "(held-out target domains: sampled, never trained on, weight 0 in the artifact)",
    )
    mu: float | None = _f(
        None, "temperature of the weight update; default: the published 0.01 (mix, all) or 0.05 (held-out domains)"
    )
    score: str = _f(
        "reference",
        "reference (the official code: clipped per-domain gradients, inner product over "
        "the mean gradient norm, clipped to [0, 5]) or paper (the raw inner product)",
    )
    max_grad_norm: float | None = _f(
        None,
        "clip each domain's gradient (targets too) to this norm before the "
        "scores, 0 = off; with score reference also the proxy's applied "
        "gradient (the official code's max_grad_norm; train.grad_clip overrides that). Default: reference "
        "5.0 (mix, all) or 1.0 (held-out domains); paper 0",
    )
    doge_impl: str = _f(
        "ghost",
        "how the per-domain gradients are computed: ghost (one forward and one backward "
        "per micro-batch, split by domain at every layer) or loop (one forward and "
        "backward per domain); equal to float rounding",
    )

    def check_options(self) -> None:
        require(self.mu is None or self.mu > 0, f"weights doge: 'mu' must be > 0, got {self.mu}")
        require(
            self.max_grad_norm is None or self.max_grad_norm >= 0,
            f"weights doge: 'max_grad_norm' must be >= 0 (0: no clipping), got {self.max_grad_norm}",
        )
        require(
            self.score != RENAMED_SCORE,
            f"weights doge: score '{RENAMED_SCORE}' is gone: it was not the official code's form; use "
            "'reference' (the official code exactly), or 'reference' with max_grad_norm 0 for the old "
            "unclipped gradients",
        )
        require(self.score in SCORES, f"weights doge: 'score' must be one of {', '.join(SCORES)}, got {self.score!r}")
        require(
            self.doge_impl in IMPLS,
            f"weights doge: 'doge_impl' must be one of {', '.join(IMPLS)}, got {self.doge_impl!r}",
        )
        require(
            not self.train.get("fsdp", False),
            "weights doge: train.fsdp is not supported (DoGE holds one full gradient per domain on every process); "
            "leave it off (DDP)",
        )
        require(
            not (self.train.get("compile", False) and self.doge_impl == "ghost"),
            "weights doge: train.compile does not work with doge_impl ghost (its per-domain gradients take several "
            "backward passes through one compiled graph, which torch refuses); use doge_impl loop or leave compile off",
        )
        require(
            all(t.strip() for t in self.target.split(",")),
            f"weights doge: 'target' must be mix, all or comma-separated domain names, got {self.target!r}",
        )

    def train_defaults(self) -> dict:
        """Score reference clips the applied gradient at max_grad_norm as the official code's trainer does
        (0: not at all; before `resolved`, the clip every run defaults to); score paper at PROXY_GRAD_CLIP."""
        clip = self.max_grad_norm if self.score == "reference" and self.max_grad_norm is not None else PROXY_GRAD_CLIP
        return {**self.TRAIN_DEFAULTS, "grad_clip": clip}

    def resolved(self, domains: list[str]) -> "DoGEConfig":
        """This config with the published defaults filled in (mu, max_grad_norm) for its target kind."""
        published = published_defaults(resolve_target(self.target, domains))
        mu = published["mu"] if self.mu is None else self.mu
        if self.max_grad_norm is not None:
            clip = self.max_grad_norm
        else:
            clip = published["max_grad_norm"] if self.score == "reference" else 0.0
        return dataclasses.replace(self, mu=mu, max_grad_norm=clip)

    def targets(self, domains: list[str]) -> list[str]:
        """Held-out target domain names ([] for the universal targets mix and all)."""
        target = resolve_target(self.target, domains)
        return [] if isinstance(target, str) else target


def check_targets(targets: list[str], domains: list[str]) -> None:
    """Unknown names -> MixweightError naming them, the closest domain and the corpus's domains."""
    check_target_domains("weights doge", targets, domains)


def proxy_train_config(config: DoGEConfig, run_dir: Path, corpus: str | None = None) -> TrainConfig:
    """The proxy's training run (`config` valid and resolved): uniform sampling over every domain, targets too."""
    return config.proxy_train_config(run_dir, data=corpus)


def _legacy_hash(config: DoGEConfig, corpus_hash: str) -> str | None:
    """The stamp an older mixweight wrote for this config (resolved), or None if it could not have made it."""
    if set(config.train) - set(MOVED_TRAIN_KEYS):
        return None  # a train key the older config did not have
    proxy = config.proxy_train_config(Path("proxy"))
    values = {k: getattr(proxy, k) for k in ("batch_size", "grad_accum", "lr", "final_lr", "warmup_steps")}
    values["checkpoint_every"] = proxy.checkpoint_every
    for key in ("proxy", "target", "steps", "mu", "score", "max_grad_norm", "seed", "log_every"):
        values[key] = getattr(config, key)
    values["corpus"] = corpus_hash
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _legacy_work_dir(config: DoGEConfig, corpus_hash: str):
    """A work directory an older mixweight made holds its stamp: kept working when the stamp is this config's."""

    def check(work_dir: Path) -> None:
        stamp = work_dir / LEGACY_STAMP
        if stamp.is_file() and stamp.read_text().strip() != _legacy_hash(config, corpus_hash):
            raise MixweightError(
                f"{work_dir}: holds a DoGE proxy run made with a different config (its {LEGACY_STAMP} stamp, "
                "from an older mixweight, does not match); delete it or choose another --work-dir"
            )

    return check


def run_doge(config: DoGEConfig) -> DomainWeights:
    """Train the DoGE proxy (or resume or reuse it) and write the weights artifact to `config.out`."""
    opened = start(config)
    corpus, manifest = opened.directory, opened.manifest
    targets = config.targets(manifest.domains)
    check_targets(targets, manifest.domains)
    config = config.resolved(manifest.domains)
    work_dir = claim_work_dir(config, _legacy_work_dir(config, manifest.config_hash))

    objective = DoGEObjective(
        manifest.domains,
        config.target,
        mu=config.mu,
        score=config.score,
        max_grad_norm=config.max_grad_norm,
        log_every=config.log_every,
        total_steps=config.steps,
        impl=config.doge_impl,
    )
    # the objective ends with the finished run's saved state: the same whether trained now, resumed or reused
    proxy_run = train_or_reuse(proxy_train_config(config, work_dir / "proxy", corpus), objective)

    # Every corpus domain is listed (held-out targets at weight 0), so `train --domain-weights` takes the file.
    by_name = dict(zip(objective.train_domains, objective.average_weights()))
    last_by_name = dict(zip(objective.train_domains, objective.last_weights()))
    weights = DomainWeights(
        domains=list(manifest.domains),
        weights=corpus_weights(manifest.domains, by_name),
        last_weights=corpus_weights(manifest.domains, last_by_name),
        targets=targets,
        method={
            "name": "doge",
            "score": config.score,
            "target": config.target,
            "mu": config.mu,
            "max_grad_norm": config.max_grad_norm,
            "steps": config.steps,
        },
        trajectory=objective.trajectory,
        replay=objective.replay_block(),
        provenance=provenance(config, manifest, corpus),
        compute=runs_compute({"proxy": proxy_run}),
    )
    # Collapse, starved domains, weights still moving: judged on every step, recomputed from the record.
    weights.warnings = weight_warnings(replay(weights), objective.train_domains)
    write_artifact(weights, config.out, manifest)
    return weights
