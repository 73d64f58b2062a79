"""The training run's config: every field is a `mixweight train` flag and a YAML key."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

from mixweight.core.config import (
    HELP,
    build_config,
    dotted_keys,
    expand_shorthand,
    rename_keys,
    require,
    undotted,
    value_at,
)
from mixweight.core.config import option as _f
from mixweight.errors import MixweightError
from mixweight.sampling.spec import MixtureSpec
from mixweight.train.mixing import MixingConfig
from mixweight.weighting.config import SampleWeightingConfig

# The flat keys of before the blocks (0.1): read for one release with one deprecation line, hidden from --help.
RENAMED = {
    "r": "sample_weighting.r",
    "temperature": "sample_weighting.r",  # the flag --temperature, torchrun's spelling of --r
    "r_schedule": "sample_weighting.schedule",
    "r_warmup_steps": "sample_weighting.warmup_steps",
    "r_start": "sample_weighting.start",
    "weight_cap": "sample_weighting.cap",
    "weighting_scope": "sample_weighting.scope",
    "weight_histogram_every": "sample_weighting.histogram_every",
    "mixing_every": "mixing.every",
    "mixing_prior": "mixing.prior",
    "odm_reward": "mixing.odm.reward",
    "odm_alpha": "mixing.odm.alpha",
    "odm_exploration": "mixing.odm.exploration",
    "doremi_reference": "mixing.doremi.reference",
    "doremi_eta": "mixing.doremi.eta",
    "doremi_smoothing": "mixing.doremi.smoothing",
    "doremi_exploration": "mixing.doremi.exploration",
}


def _block(cls, help_text: str):
    """A typed block: its class's defaults unless given (YAML: a mapping; flags: --BLOCK.KEY)."""
    return dataclasses.field(default_factory=cls, metadata={HELP: help_text})


@dataclass
class TrainConfig:
    RENAMED_KEYS: ClassVar[dict] = RENAMED

    data: str = _f(
        None,
        "corpus directory (made by `mixweight data synth` or `data prepare`), a corpus URL (s3://, gs://, ..., "
        "file:///DIR; cached in --cache-dir), or `synthetic` for the built-in default corpus",
    )
    out: str = _f(None, "run directory: config, metrics, checkpoints, eval")
    model: str = _f(
        "gpt2-tiny",
        "model spec: a name in proxies/ (gpt2-tiny, llama-tiny, gpt2-mini, ...) or a path to an HF config JSON",
    )
    steps: int = _f(200, "optimizer steps")
    batch_size: int = _f(16, "sequences per micro-batch on each process")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    lr: float = _f(1e-3, "peak learning rate (after warmup)")
    final_lr: float = _f(1e-4, "learning rate at the last step (cosine decay target)")
    warmup_steps: int = _f(20, "linear warmup steps from 0 to lr")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (matrices only; not biases, norms or embeddings)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value (0 disables)")
    seed: int = _f(0, "seed for model init and data order")
    domain_weights: str = _f(
        "natural",
        "sampling proportions of the domains: natural (by token count), uniform, a domain_weights.json, a schedule "
        "file (.yaml/.json list of {start_step, weights}), or online:odm / online:doremi (updated from this run's "
        "own losses every --mixing.every steps)",
    )
    domain_weights_every: int = _f(
        0, "follow the weights file's trajectory, entry i from step i*N (0: use its final weights)"
    )
    max_epochs: Optional[float] = _f(
        None,
        "at most this many passes over any domain's training tokens in this run (T = steps x global batch x "
        "seq_len): every phase's weights are moved onto w_d <= E * tokens_d / T by a KL projection (default: none)",
    )
    mixing: MixingConfig = _block(
        MixingConfig,
        "online domain mixing (domain_weights online:NAME): every, prior, and each mixer's options under its name "
        "(odm: {reward, alpha, exploration}, doremi: {reference, eta, smoothing, exploration})",
    )
    batching: str = _f(
        "random",
        "how micro-batches mix domains: random (shuffled together) or per_stream (each micro-batch from one domain); "
        "stratified is refused, it drops samples",
    )
    sample_weighting: SampleWeightingConfig = _block(
        SampleWeightingConfig,
        "loss-based sample weights inside each step: a name (none, linupper, quadratic, extremes) or {name, r, "
        "schedule, warmup_steps, start, cap, scope, histogram_every}",
    )
    max_nonfinite_steps: int = _f(
        20, "stop the run after this many consecutive steps skipped for non-finite losses or gradients"
    )
    fsdp: bool = _f(False, "under torchrun, shard the model with PyTorch FSDP (fully_shard) instead of DDP")
    eval_every: int = _f(50, "evaluate per-domain validation loss every N steps (0: only at the end)")
    eval_blocks: int = _f(64, "validation blocks per domain used by evaluation")
    eval_batch_size: int = _f(32, "sequences per evaluation batch")
    checkpoint_every: int = _f(100, "save a checkpoint every N steps (the last step is always saved)")
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep")
    log_every: int = _f(10, "write training metrics every N steps")
    precision: str = _f(
        "auto",
        "auto (bf16 autocast on a GPU, fp32 on CPU), bf16 (autocast on GPU or CPU; losses and weights stay fp32) or "
        "fp32",
    )
    loss_impl: str = _f(
        "auto",
        "per-sample loss: full (the model's logits [B, L, V], then cross-entropy), chunked (output projection and "
        "cross-entropy over chunks of tokens, recomputed in the backward: no full logits tensor; Hugging Face causal "
        "LMs), or auto (chunked when vocabulary x seq_len >= 2^22)",
    )
    compile: bool = _f(
        False,
        "wrap the model with torch.compile (module.compile(), after DDP/FSDP wrapping; checkpoints keep plain "
        "parameter names)",
    )
    resume: bool = _f(False, "continue from the newest checkpoint in --out")
    progress: bool = _f(True, "show a progress bar (only on a terminal)")
    report_to: Union[list[str], str] = _f(
        "none",
        "mirror every metrics record to experiment trackers: a "
        "comma-separated list of tensorboard, wandb, mlflow (YAML: a list), or "
        "none; needs the tracking extra (pip install 'mixweight[tracking]')",
    )

    def __post_init__(self) -> None:
        from mixweight.core.tracking import parse_report_to

        self.report_to = parse_report_to(self.report_to)  # one form in config.yaml: a list of names
        # Python callers may give a block as its shorthand or a mapping: built (and checked) as the YAML's
        if isinstance(self.sample_weighting, (str, dict)):
            self.sample_weighting = build_config(
                SampleWeightingConfig,
                expand_shorthand(SampleWeightingConfig, self.sample_weighting),
                "train",
                "sample_weighting.",
            )
        if isinstance(self.mixing, dict):
            self.mixing = build_config(MixingConfig, self.mixing, "train", "mixing.")

    @property
    def mixture(self) -> MixtureSpec:
        """`domain_weights` parsed: what kind of mixture the run samples (named, file, online:NAME)."""
        return MixtureSpec.parse(self.domain_weights)

    def validate(self, require_paths: bool = True) -> None:
        """Check every value once, where it enters. `require_paths=False`: a config that a caller completes before
        training (the pipeline's train and arm sections): data, out and an online DoReMi reference may be unset."""
        from mixweight.core.tracking import check_report_to

        check_report_to(self.report_to, "train")

        require(not require_paths or self.data is not None, "train: --data is required (a corpus directory)")
        require(not require_paths or self.out is not None, "train: --out is required (the run directory)")
        for name in (
            "max_nonfinite_steps",
            "steps",
            "batch_size",
            "grad_accum",
            "eval_blocks",
            "eval_batch_size",
            "keep_checkpoints",
            "log_every",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            require(value > 0, f"train: '{name}' must be a positive integer, got {value}")
        self.sample_weighting.validate()
        self.mixing.validate()
        for name in ("warmup_steps", "eval_every"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"train: '{name}' must be >= 0, got {value}")
        require(self.lr > 0, f"train: 'lr' must be > 0, got {self.lr}")
        require(0 <= self.final_lr <= self.lr, f"train: 'final_lr' must be in [0, lr={self.lr}], got {self.final_lr}")
        require(self.weight_decay >= 0, f"train: 'weight_decay' must be >= 0, got {self.weight_decay}")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train: adam betas must be in [0, 1)")
        require(self.grad_clip >= 0, f"train: 'grad_clip' must be >= 0, got {self.grad_clip}")
        require(
            self.domain_weights_every >= 0,
            f"train: 'domain_weights_every' must be >= 0, got {self.domain_weights_every}",
        )
        require(
            self.max_epochs is None or 0 < self.max_epochs < float("inf"),
            f"train: 'max_epochs' must be a number > 0 (passes over each domain's tokens), got {self.max_epochs}",
        )
        from mixweight.sampling.loader import check_batching

        check_batching(self.batching)
        from mixweight.train.online import check_online_config

        check_online_config(self, require_reference=require_paths)
        require(
            self.precision in ("auto", "bf16", "fp32"),
            f"train: 'precision' must be auto, bf16 or fp32, got {self.precision!r}",
        )
        require(
            self.loss_impl in ("auto", "full", "chunked"),
            f"train: 'loss_impl' must be auto, full or chunked, got {self.loss_impl!r}",
        )


def saved_config_values(values: dict, where: str) -> dict:
    """A run's config.yaml as a mapping in today's spelling: the flat keys of before the blocks moved into them
    (quietly: an older mixweight wrote it), the sample_weighting shorthand as its block."""
    values = rename_keys(TrainConfig, values, where, quiet=True)
    if "sample_weighting" in values:
        values = {**values, "sample_weighting": expand_shorthand(SampleWeightingConfig, values["sample_weighting"])}
    return values


def canonical_values(values: dict) -> dict:
    """Train keys as given, each block's keys at their typed values (the shorthand expanded, a name lower-cased,
    1 as 1.0): two spellings of one config compare equal (a pipeline stage's key). A block that does not build is
    kept as given (its stage was refused when read)."""
    hints = typing.get_type_hints(TrainConfig)
    canonical = dict(values)
    for key, value in values.items():
        cls = hints.get(key)
        if not dataclasses.is_dataclass(cls) or not isinstance(value, (str, dict)):
            continue
        given = expand_shorthand(cls, value)
        try:
            typed = build_config(cls, given, "train", f"{key}.")
        except MixweightError:
            continue
        flat = {path: value_at(typed, path) for path, v in dotted_keys(given).items() if v != {}}
        canonical[key] = undotted(flat)
    return canonical
