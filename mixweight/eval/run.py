"""`mixweight eval RUN`: recompute the per-domain evaluation of any checkpoint of a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch

from mixweight.core.config import option
from mixweight.core.jsonio import write_json_atomic
from mixweight.core.model import load_model
from mixweight.core.yamlio import load_yaml
from mixweight.data.corpus import open_corpus
from mixweight.errors import MixweightError
from mixweight.train import checkpoint as ckpt
from mixweight.train.compute import COMPUTE_KEY
from mixweight.train.validation import evaluate_domains, load_validation


def _find_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    if checkpoint is None:
        found = ckpt.latest_checkpoint(run_dir)
        if found is None:
            raise MixweightError(f"{run_dir}: no checkpoints (expected {run_dir}/checkpoints/step-N/)")
        return found
    for candidate in (Path(checkpoint), ckpt.checkpoints_dir(run_dir) / checkpoint):
        if (candidate / "model").is_dir():
            return candidate
    available = [p.name for _, p in ckpt.list_checkpoints(run_dir)]
    raise MixweightError(f"checkpoint '{checkpoint}' not found in {run_dir}; available: {available}")


@dataclass
class EvalConfig:
    """`mixweight eval RUN`."""

    COMMAND: ClassVar[str] = "eval"

    run: Optional[str] = option(None, "a run directory written by mixweight train", positional=True)
    data: Optional[str] = option(None, "corpus directory or URL (default: the run's)")
    checkpoint: Optional[str] = option(None, "step-N or a path (default: the newest)")


def evaluate_run(run: str, data: str | None = None, checkpoint: str | None = None) -> dict:
    """Evaluate a checkpoint on the run's corpus (or `data`); writes RUN/eval/step-N.json.

    The newest checkpoint's result also replaces RUN/eval.json.
    """
    run_dir = Path(run)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise MixweightError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_yaml(config_path.read_text())
    config = config if isinstance(config, dict) else {}
    if data is None and not isinstance(config.get("data"), str):
        raise MixweightError(
            f"{config_path}: empty or without 'data' (the run's corpus); restore the run's config.yaml, or pass --data"
        )
    opened = open_corpus(data or config["data"])
    corpus, manifest = opened.directory, opened.manifest
    path = _find_checkpoint(run_dir, checkpoint)
    model = load_model(path / "model")
    if model.config.vocab_size != manifest.vocab_size:
        raise MixweightError(
            f"checkpoint {path}: the model's vocabulary ({model.config.vocab_size}) differs from corpus {corpus}'s "
            f"({manifest.vocab_size}); evaluate on a corpus made with the same tokenizer"
        )
    if torch.cuda.is_available():
        model = model.cuda()
    val_sets = load_validation(corpus, manifest, config.get("eval_blocks", 64))
    result = evaluate_domains(
        model, val_sets, config.get("eval_batch_size", 32), irreducible=manifest.irreducible_loss, blocks=True
    )
    step = ckpt.read_state(path)["step"]
    record = {"step": step, "checkpoint": str(path), **result}
    (run_dir / "eval").mkdir(exist_ok=True)
    write_json_atomic(run_dir / "eval" / f"step-{step}.json", record)
    if path == ckpt.latest_checkpoint(run_dir):
        write_json_atomic(run_dir / "eval.json", {"step": step, **result, **_training_compute(run_dir, step)})
    return record


def _training_compute(run_dir: Path, step: int) -> dict:
    """The training run's compute record from the eval.json being replaced, when it is of the same step."""
    try:
        before = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    keep = isinstance(before, dict) and before.get("step") == step and isinstance(before.get(COMPUTE_KEY), dict)
    return {COMPUTE_KEY: before[COMPUTE_KEY]} if keep else {}
