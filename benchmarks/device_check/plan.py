"""What the check runs: sizes, time budgets, the parts in order, and each `mixweight train` arm's config."""

from __future__ import annotations

from pathlib import Path

from .features import as_config

SCHEMA = "mixweight-device-check/1"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Sizes. gpu: the real check; cpu: a dry run that exercises every part in seconds of compute.
PROFILES = {
    "gpu": {
        "model": "gpt2-mini",
        "seq_len": 512,
        "batch_size": 8,
        "steps": 200,
        "drop_steps": 30,
        "warmup_steps": 20,
        "tokens_per_domain": 131_072,
        "proxy_steps": 20,
        "proxy_repeats": 2,
        "total_budget_s": 450,
    },
    "cpu": {
        "model": "gpt2-micro",
        "seq_len": 64,
        "batch_size": 2,
        "steps": 6,
        "drop_steps": 2,
        "warmup_steps": 1,
        "tokens_per_domain": 4096,
        "proxy_steps": 3,
        "proxy_repeats": 1,
        "total_budget_s": 3600,
    },
}
# Seconds each part may take at most (gpu; the cpu dry run gets 10x, the shared CI CPU is slow), in the order
# they run. The whole run is also bounded by the profile's total_budget_s: a part never gets more than what
# is left of it.
PART_BUDGET_S = {
    "synth": 60,
    "mixweight": 90,
    "transformers": 90,
    "linupper": 90,
    "proxy_steps": 90,
    "loss_full": 90,
    "loss_chunked": 90,
    "compile": 180,
}
PARTS = list(PART_BUDGET_S)
WORK_MARKER = ".mixweight-device-check"
MIN_PART_S = 10  # a part is skipped, not started, when less than this is left of the total budget

# The training arms: part -> (worker, {feature: value}); a feature is named in features.FEATURES.
TRAIN_ARMS = {
    "mixweight": ("mixweight", {}),
    "transformers": ("transformers", {}),
    "linupper": ("mixweight", {"sample_weighting": "linupper"}),
    "loss_full": ("mixweight", {"loss_impl": "full"}),
    "loss_chunked": ("mixweight", {"loss_impl": "chunked"}),
    "compile": ("mixweight", {"compile": True}),
}
ARM_LABELS = {"mixweight": "mixweight train (plain)", "transformers": "transformers.Trainer"}


def profile_for(args) -> dict:
    """The sizes of this run: the profile (--cpu or not) with the sizes given on the command line."""
    profile = dict(PROFILES["cpu" if args.cpu else "gpu"])
    for key in ("model", "steps", "batch_size", "seq_len"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    return profile


def train_config(profile: dict, corpus: Path, run_dir: Path, precision: str, settings: dict) -> dict:
    """One `mixweight train` arm as its YAML config: the check's sizes, no evaluation or checkpoint to speak
    of, every step logged (its tokens/s), plus the arm's feature settings."""
    base = {
        "data": str(corpus),
        "out": str(run_dir),
        "model": profile["model"],
        "steps": profile["steps"],
        "batch_size": profile["batch_size"],
        "warmup_steps": profile["warmup_steps"],
        "eval_every": 0,
        "eval_blocks": 1,
        "eval_batch_size": profile["batch_size"],
        "checkpoint_every": 10**9,
        "keep_checkpoints": 1,
        "log_every": 1,
        "sample_weighting": {"histogram_every": 10**9},  # no histograms inside the timed steps
        "precision": precision,
        "seed": 0,
        "progress": False,
    }
    return as_config(settings, base)
