"""A reference run: a finished `mixweight train` run whose model scores the main model's losses.

DoReMi's proxy (`weights doremi --reference RUN`, or the round's own reference) and online
DoReMi (`--mixing.doremi.reference RUN`) both measure an excess loss over a reference model, so both
check a reference the same way, here, before anything is written:

- it is a run directory: config.yaml and a checkpoint;
- its model has the corpus's vocabulary, and positions for the corpus's blocks;
- it was trained on the same corpus (the manifests' config_hash), when its corpus can still be
  read; when it cannot (moved, on another machine), one warning line says only the vocabulary
  was checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixweight.core.distributed import is_main_process
from mixweight.core.model import POSITION_KEYS
from mixweight.core.yamlio import load_yaml_file
from mixweight.data.corpus import Corpus, open_corpus
from mixweight.errors import MixweightError, first_line
from mixweight.train import checkpoint as ckpt


def check_reference_run(run_dir, corpus: Corpus, where: str) -> Path:
    """The reference run's newest checkpoint, after the checks of the module docstring. `where` starts messages."""
    run_dir = Path(run_dir)
    where = f"{where} {run_dir}"
    latest = ckpt.latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if latest is None or not (run_dir / "config.yaml").is_file():
        raise MixweightError(
            f"{where}: not a finished run directory (needs config.yaml and a checkpoint); give a `mixweight train` "
            "run, such as the reference run `mixweight weights doremi` leaves at <out stem>.work/round-0/reference"
        )
    manifest = corpus.manifest
    model_config = latest / "model" / "config.json"
    try:
        raw = json.loads(model_config.read_text())
        vocab = raw.get("vocab_size")
    except (OSError, AttributeError, ValueError) as exc:
        raise MixweightError(f"{where}: {model_config} cannot be read ({first_line(exc)})") from exc
    positions = next((raw[k] for k in POSITION_KEYS if isinstance(raw.get(k), int)), None)
    if positions is not None and positions < manifest.seq_len:
        raise MixweightError(
            f"{where}: its model has {positions} positions, fewer than the corpus's seq_len {manifest.seq_len}, so "
            "it cannot score a block; train the reference on this corpus with a model of enough positions"
        )
    if vocab != manifest.vocab_size:
        raise MixweightError(
            f"{where}: its model has vocab_size {vocab}, the corpus {corpus.location} has {manifest.vocab_size} "
            f"(tokenizer {manifest.tokenizer.get('fingerprint')}); train the reference on this corpus"
        )
    saved = load_yaml_file(run_dir / "config.yaml", f"{where}: config") or {}
    theirs_location = str(saved.get("data")) if isinstance(saved, dict) else "None"
    try:
        theirs = open_corpus(theirs_location, is_main=False).manifest
    except MixweightError:
        if is_main_process():
            print(
                f"mixweight: warning: {where}: its corpus {theirs_location} cannot be read, so only its vocabulary "
                f"was checked against {corpus.location}",
                file=sys.stderr,
                flush=True,
            )
        return latest
    if theirs.config_hash != manifest.config_hash:
        raise MixweightError(
            f"{where}: trained on corpus {theirs_location} (config_hash {theirs.config_hash[:12]}), but this run "
            f"reads corpus {corpus.location} (config_hash {manifest.config_hash[:12]}); the reference must be "
            "trained on the same corpus"
        )
    return latest
