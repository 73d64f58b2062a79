"""The training run's config: every field is a `mixweight train` flag and a YAML key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.sampling.spec import MixtureSpec


@dataclass
class TrainConfig:
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
        "own losses every --mixing-every steps)",
    )
    domain_weights_every: int = _f(
        0, "follow the weights file's trajectory, entry i from step i*N (0: use its final weights)"
    )
    max_epochs: Optional[float] = _f(
        None,
        "at most this many passes over any domain's training tokens in this run (T = steps x global batch x "
        "seq_len): every phase's weights are moved onto w_d <= E * tokens_d / T by a KL projection (default: none)",
    )
    mixing_every: int = _f(
        0, "online domain weights: steps per phase; the mixture is re-chosen every N steps (needs online:...)"
    )
    mixing_prior: str = _f(
        "uniform", "online domain weights: the first phase's mixture: uniform, natural or a domain_weights.json"
    )
    odm_reward: str = _f(
        "smoothed",
        "online:odm: smoothed (the official code's smoothed-mean updater: R <- alpha R + (1 - alpha) exp(loss), "
        "policy linear in R) or exp3 (its EXP3 updater: R += importance-weighted loss / 10, exponential weights)",
    )
    odm_alpha: float = _f(0.9, "online:odm: reward smoothing of odm_reward smoothed, R <- alpha R + (1 - alpha) exp(L)")
    odm_exploration: Optional[float] = _f(
        None,
        "online:odm: a fixed exploration rate in (0, 1/k], mass k eps spread as the prior (default: min(1/k, "
        "sqrt(ln k / (k t))), decaying)",
    )
    doremi_reference: Optional[str] = _f(
        None,
        "online:doremi: the reference run directory (`mixweight weights doremi` leaves it at "
        "<out stem>.work/round-0/reference), trained on this corpus",
    )
    doremi_eta: float = _f(1.0, "online:doremi: step size of the exponentiated-gradient update")
    doremi_smoothing: float = _f(1e-3, "online:doremi: smoothing c, c/k of uniform mixed into the weights")
    doremi_exploration: float = _f(
        0.1,
        "online:doremi: each phase samples (1 - g) alpha + g prior, so no domain leaves the batches and freezes its "
        "excess loss (0: sample alpha itself)",
    )
    batching: str = _f(
        "random",
        "how micro-batches mix domains: random (shuffled together) or per_stream (each micro-batch from one domain); "
        "stratified is refused, it drops samples",
    )
    sample_weighting: str = _f(
        "none", "loss-based sample weights inside each step: none, linupper, quadratic or extremes"
    )
    r: float = _f(
        0.4,
        "sample-weight temperature, the paper's r (YAML key r): large -> uniform weights; the max/min "
        "weight ratio is at most e^(1/r). --r is an alias that torchrun's own parser refuses (it reads it as "
        "--rdzv-*), so under torchrun write --temperature",
        flags=("--temperature", "--r"),
    )
    r_schedule: str = _f(
        "step",
        "how r reaches its target: step (r_start, then r after r_warmup_steps), linear or cosine (anneal from r_start "
        "to r over r_warmup_steps), or burnin (plain mean loss for r_warmup_steps, then r)",
    )
    r_warmup_steps: Optional[int] = _f(
        None,
        "optimizer steps before r reaches its target (default: 5% of --steps, the paper's curriculum: near-uniform "
        "weights at r_start while every loss is high, then r; the GPT-2 code burns in 1000 of 20000 steps, the "
        "1.4B/7B code (fms-fsdp, branch reweighted-train) holds r_start 100 for 2000; 0: the target r from the first "
        "step, the default before 0.2: a sample-weighted run made then resumes with --r-warmup-steps 0)",
    )
    r_start: float = _f(100.0, "r during the warmup (step) or at step 0 (linear, cosine); unused by burnin")
    weight_cap: Optional[float] = _f(
        None, "optional cap c: no sample weight above c/N (the convergence theorem's condition with c=2)"
    )
    weight_histogram_every: int = _f(
        100, "log a histogram of the sample weights (each times the batch size) every this many steps"
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
    weighting_scope: str = _f(
        "step",
        "the group sample weights are normalized over: step (all micro-batches on all processes, exact; with "
        "grad_accum > 1 one extra no-grad forward) or micro_batch (each micro-batch on all processes, no extra cost)",
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
        if isinstance(self.sample_weighting, str):  # names are case-insensitive: lower-cased here, where they enter
            self.sample_weighting = self.sample_weighting.lower()

    @property
    def mixture(self) -> MixtureSpec:
        """`domain_weights` parsed: what kind of mixture the run samples (named, file, online:NAME)."""
        return MixtureSpec.parse(self.domain_weights)

    def validate(self, require_paths: bool = True) -> None:
        """Check every value once, where it enters. `require_paths=False`: a config that a caller completes before
        training (the pipeline's train and arm sections): data, out and an online DoReMi reference may be unset."""
        from mixweight.core.tracking import check_report_to
        from mixweight.errors import did_you_mean
        from mixweight.weighting import SAMPLE_WEIGHTINGS, SCHEDULES

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
            "weight_histogram_every",
        ):
            value = getattr(self, name)
            require(value > 0, f"train: '{name}' must be a positive integer, got {value}")
        require(
            self.sample_weighting in SAMPLE_WEIGHTINGS,
            f"train: unknown 'sample_weighting' {self.sample_weighting!r}; "
            f"{did_you_mean(self.sample_weighting, SAMPLE_WEIGHTINGS)}valid: {', '.join(SAMPLE_WEIGHTINGS)}",
        )
        require(
            self.r_schedule in SCHEDULES,
            f"train: unknown 'r_schedule' {self.r_schedule!r}; "
            f"{did_you_mean(self.r_schedule, SCHEDULES)}valid: {', '.join(SCHEDULES)}",
        )
        # Checked here once for a run (NaN fails every comparison); the weighting functions assume valid values.
        require(self.r > 0, f"train: 'r' (--temperature) must be > 0, got {self.r}")
        require(self.r_start > 0, f"train: 'r_start' must be > 0, got {self.r_start}")
        require(
            self.weight_cap is None or self.weight_cap >= 1,
            f"train: 'weight_cap' must be >= 1 (c/N can be no less than the uniform 1/N), got {self.weight_cap}",
        )
        for name in ("warmup_steps", "eval_every", "r_warmup_steps"):
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
        require(
            self.weighting_scope in ("step", "micro_batch"),
            f"train: 'weighting_scope' must be step or micro_batch, got {self.weighting_scope!r}",
        )
