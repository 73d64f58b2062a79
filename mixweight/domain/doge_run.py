"""`mixweight weights doge`: train a DoGE proxy and write `domain_weights.json`.

    DoGEConfig -> check --out and the targets against the corpus -> fill in the published
    defaults for the target kind (mu, max_grad_norm) -> train the proxy (the training loop with a
    DoGEObjective, uniform sampling over every domain, targets included) -> artifact

The artifact lists every corpus domain (held-out targets at weight 0, named in `targets`), so
`train --domain-weights` takes it as it is, and holds the `replay` block from which
`mixweight.domain.doge.replay` recomputes every step's weights.

The proxy run lives in a work directory (default `<out stem>.work/` beside `out`) and is
resumed from its newest checkpoint when run again with the same config. The artifact holds
no paths or timings, so the same seed and config give a byte-identical file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import mixweight
from mixweight.core.artifact import DomainWeights, check_output_file, corpus_weights
from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.core.distributed import is_main_process
from mixweight.core.model import load_spec
from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import resolve_corpus
from mixweight.domain.doge import IMPLS, SCORES, DoGEObjective, published_defaults, replay, resolve_target
from mixweight.domain.health import format_warning, weight_warnings
from mixweight.errors import MixweightError, did_you_mean
from mixweight.train import checkpoint as ckpt
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

# Keys that do not change the weights: left out of the config hash (and of the resume check).
# doge_impl: both forms compute the same gradients (to float rounding), so a run may resume with the other.
NOT_HASHED = {"out", "work_dir", "progress", "data", "doge_impl", "report_to"}  # report_to: a view of the metrics
PROXY_EVAL_BLOCKS = 16  # the proxy's final per-domain evaluation: informative only
RENAMED_SCORE = "normalized-clipped"  # an earlier score that claimed to be the official code's form
PROXY_GRAD_CLIP = 1.0  # the applied gradient's clip for score paper (every mixweight run's default)


@dataclass
class DoGEConfig:
    data: str = _f(
        None,
        "corpus directory (made by `mixweight data synth` or `data prepare`), a corpus URL "
        "(s3://, gs://, ..., file:///DIR; cached in --cache-dir), or `synthetic`",
    )
    out: str = _f(None, "the domain weights file to write (domain_weights.json)")
    proxy: str = _f("gpt2-tiny", "proxy model spec: a name in proxies/ or a path to an HF config JSON")
    target: str = _f(
        "mix",
        "mix (the published universal setting: a held-out mixture of the training domains, "
        "1 in k+1 blocks chosen by a hash of their tokens, never trained on), all (the paper's "
        "universal form: the other training domains, self term excluded) or DOMAIN[,DOMAIN] "
        "(held-out target domains: sampled, never trained on, weight 0 in the artifact)",
    )
    steps: int = _f(200, "proxy optimizer steps")
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
        "gradient (the official code's max_grad_norm). Default: reference "
        "5.0 (mix, all) or 1.0 (held-out domains); paper 0",
    )
    batch_size: int = _f(16, "sequences per micro-batch on each process")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    lr: float = _f(1e-3, "proxy peak learning rate (after warmup)")
    final_lr: float = _f(1e-4, "proxy learning rate at the last step (cosine decay target)")
    warmup_steps: int = _f(20, "linear warmup steps from 0 to lr")
    seed: int = _f(0, "seed for proxy init and data order")
    work_dir: str = _f(None, "directory for the proxy run and its checkpoints (default: <out stem>.work/ beside out)")
    checkpoint_every: int = _f(100, "save a proxy checkpoint every N steps (a rerun resumes from the newest)")
    log_every: int = _f(10, "record the weights and scores in the trajectory (and metrics) every N steps")
    progress: bool = _f(True, "show a progress bar (only on a terminal)")
    doge_impl: str = _f(
        "ghost",
        "how the per-domain gradients are computed: ghost (one forward and one backward "
        "per micro-batch, split by domain at every layer) or loop (one forward and "
        "backward per domain); equal to float rounding",
    )
    report_to: Union[list[str], str] = _f(
        "none",
        "mirror the proxy run's metrics to experiment trackers: tensorboard, wandb, mlflow (comma-separated), or none",
    )

    def validate(self) -> None:
        from mixweight.core.tracking import check_report_to, parse_report_to

        check_report_to(parse_report_to(self.report_to), "weights doge")
        require(self.data is not None, "weights doge: --data is required (a corpus directory)")
        require(self.out is not None, "weights doge: --out is required (the weights file to write)")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            require(value > 0, f"weights doge: '{name}' must be a positive integer, got {value}")
        require(self.warmup_steps >= 0, f"weights doge: 'warmup_steps' must be >= 0, got {self.warmup_steps}")
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
        require(self.lr > 0, f"weights doge: 'lr' must be > 0, got {self.lr}")
        require(
            0 <= self.final_lr <= self.lr, f"weights doge: 'final_lr' must be in [0, lr={self.lr}], got {self.final_lr}"
        )
        require(
            all(t.strip() for t in self.target.split(",")),
            f"weights doge: 'target' must be mix, all or comma-separated domain names, got {self.target!r}",
        )

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

    def resolved_work_dir(self) -> Path:
        out = Path(self.out)
        return Path(self.work_dir) if self.work_dir else out.with_name(f"{out.stem}.work")


def check_targets(targets: list[str], domains: list[str]) -> None:
    """Unknown names -> MixweightError naming them, the closest domain and the corpus's domains."""
    for name in targets:
        if name not in domains:
            hint = did_you_mean(name, domains, cutoff=0.4)
            raise MixweightError(
                f"weights doge: --target '{name}' is not a domain of the corpus; {hint}"
                f"the corpus's domains are {', '.join(domains)}"
            )
    if len(set(targets)) == len(domains):
        raise MixweightError(
            f"weights doge: --target names every domain ({', '.join(domains)}); leave at least one to train on"
        )


def _config_hash(config: DoGEConfig, corpus_hash: str) -> str:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_HASHED}
    values["corpus"] = corpus_hash
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _check_work_dir(work_dir: Path, config_hash: str) -> None:
    """A work directory belongs to one config: resuming with another would mix two runs."""
    stamp = work_dir / "doge_config_hash"
    if stamp.is_file() and stamp.read_text().strip() != config_hash:
        raise MixweightError(
            f"{work_dir}: holds a DoGE proxy run made with a different config; "
            "pass another --work-dir (or remove this one) to start afresh"
        )
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(config_hash + "\n")


def proxy_train_config(config: DoGEConfig, run_dir: Path) -> TrainConfig:
    """The proxy's training run; `config` resolved. Score reference clips the applied gradient at
    max_grad_norm as the official code's trainer does (0: not at all); score paper at PROXY_GRAD_CLIP."""
    grad_clip = config.max_grad_norm if config.score == "reference" else PROXY_GRAD_CLIP
    return TrainConfig(
        data=config.data,
        out=str(run_dir),
        model=config.proxy,
        steps=config.steps,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        lr=config.lr,
        final_lr=config.final_lr,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        domain_weights="uniform",
        eval_every=0,
        eval_blocks=PROXY_EVAL_BLOCKS,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=config.progress,
        grad_clip=grad_clip,
        resume=ckpt.latest_checkpoint(run_dir) is not None,
        report_to=config.report_to,
    )


def run_doge(config: DoGEConfig) -> DomainWeights:
    """Train the DoGE proxy (or resume it) and write the weights artifact to `config.out`."""
    config.validate()
    check_output_file(config.out, "weights doge: --out")  # before any training, not after it
    manifest = load_manifest(resolve_corpus(config.data, is_main_process()))
    targets = config.targets(manifest.domains)
    check_targets(targets, manifest.domains)
    config = config.resolved(manifest.domains)
    config_hash = _config_hash(config, manifest.config_hash)
    work_dir = config.resolved_work_dir()
    _check_work_dir(work_dir, config_hash)

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
    train(proxy_train_config(config, work_dir / "proxy"), objective=objective)

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
        provenance={
            "seed": config.seed,
            "config_hash": config_hash,
            "proxy": {"spec": config.proxy, "config": load_spec(config.proxy)},
            "tokenizer_fingerprint": manifest.tokenizer.get("fingerprint"),
            "domain_token_counts": manifest.train_tokens(),
            "mixweight_version": mixweight.__version__,
        },
    )
    # Collapse, starved domains, weights still moving: judged on every step, recomputed from the record.
    weights.warnings = weight_warnings(replay(weights), objective.train_domains)
    if is_main_process():
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        weights.write(config.out)
        for warning in weights.warnings:
            print(f"mixweight doge: warning: {format_warning(warning)}", file=sys.stderr, flush=True)
    return weights
