"""`mixweight eval RUN`: recompute the per-domain evaluation of any checkpoint of a run (`evaluate_run`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch

from mixweight.core.config import option
from mixweight.core.jsonio import write_json_atomic
from mixweight.core.model import load_model
from mixweight.core.yamlio import load_yaml_file
from mixweight.data.corpus import open_corpus
from mixweight.errors import MixweightError
from mixweight.train import checkpoint as ckpt
from mixweight.train import rundir
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


def _run_config(run_dir: Path) -> dict:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise MixweightError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_yaml_file(config_path, "the run's config")
    return config if isinstance(config, dict) else {}


def _own_corpus(run_dir: Path, data: str | None, corpus) -> bool:
    """True when the corpus evaluated is the one the run trained on: by content (inputs.json's corpus hash), or,
    for a run from before inputs.json, by its path."""
    try:
        pinned = json.loads((run_dir / rundir.INPUTS_NAME).read_text())["corpus"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pinned = None
    if pinned is not None:
        return rundir.corpus_hash(corpus.directory, corpus.manifest) == pinned
    return data is None


def _result_name(run_dir: Path, checkpoint: Path, step: int, own_checkpoint: bool, corpus, own_corpus: bool) -> str:
    """eval/step-N.json for the run's own checkpoint on its own corpus; otherwise a name of its own that says
    what was evaluated (another run's checkpoint, another corpus), so the run's own results are never replaced."""
    if own_checkpoint and own_corpus:
        return f"step-{step}.json"
    parts = [] if own_checkpoint else [checkpoint.resolve().parent.parent.name]
    parts += [] if own_corpus else ["on-" + Path(str(corpus.location).rstrip("/")).name]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:60]
    key = json.dumps([str(checkpoint.resolve()), corpus.location, corpus.manifest.config_hash])
    return f"step-{step}.{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.json"


def evaluate_run(run: str, data: str | None = None, checkpoint: str | None = None) -> dict:
    """Evaluate a checkpoint of RUN on the run's corpus (or `data`); writes the result into RUN/eval/.

    The run's own checkpoint on its own corpus is RUN/eval/step-N.json, and its final checkpoint's result
    also replaces RUN/eval.json; another corpus or another run's checkpoint gets a file named by what was
    evaluated (`_result_name`) and never touches eval.json. The run's lock is held throughout: a run
    that is training is refused (its eval.json is its own to write).
    """
    run_dir = Path(run)
    config = _run_config(run_dir)
    if data is None and not isinstance(config.get("data"), str):
        raise MixweightError(
            f"{run_dir / 'config.yaml'}: empty or without 'data' (the run's corpus); restore the run's config.yaml, "
            "or pass --data"
        )
    opened = open_corpus(data or config["data"])
    corpus, manifest = opened.directory, opened.manifest
    path = _find_checkpoint(run_dir, checkpoint)
    own_checkpoint = path.resolve().parent == ckpt.checkpoints_dir(run_dir).resolve()
    step = ckpt.read_state(path)["step"]
    name = _result_name(run_dir, path, step, own_checkpoint, opened, _own_corpus(run_dir, data, opened))
    lock = rundir.RunLock(run_dir)
    lock.acquire()  # refused while the run trains
    try:
        model = load_model(path / "model")
        if model.config.vocab_size != manifest.vocab_size:
            raise MixweightError(
                f"checkpoint {path}: the model's vocabulary ({model.config.vocab_size}) differs from corpus "
                f"{corpus}'s ({manifest.vocab_size}); evaluate on a corpus made with the same tokenizer"
            )
        if torch.cuda.is_available():
            model = model.cuda()
        val_sets = load_validation(corpus, manifest, config.get("eval_blocks", 64))
        result = evaluate_domains(
            model, val_sets, config.get("eval_batch_size", 32), irreducible=manifest.irreducible_loss, blocks=True
        )
        record = {"step": step, "checkpoint": str(path), "data": opened.location, **result}
        lock.keep()
        (run_dir / "eval").mkdir(exist_ok=True)
        write_json_atomic(run_dir / "eval" / name, record)
        final = step == config.get("steps") and path == ckpt.latest_checkpoint(run_dir)
        if name == f"step-{step}.json" and final:  # the run's final evaluation, recomputed
            write_json_atomic(run_dir / "eval.json", {"step": step, **result, **_training_compute(run_dir, step)})
        return {**record, "written": str(run_dir / "eval" / name)}
    finally:
        lock.release()


def _training_compute(run_dir: Path, step: int) -> dict:
    """The training run's compute record from the eval.json being replaced, when it is of the same step."""
    try:
        before = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    keep = isinstance(before, dict) and before.get("step") == step and isinstance(before.get(COMPUTE_KEY), dict)
    return {COMPUTE_KEY: before[COMPUTE_KEY]} if keep else {}
