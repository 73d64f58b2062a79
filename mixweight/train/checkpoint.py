"""Checkpoints in RUN/checkpoints/step-N/, written atomically.

A checkpoint is built in a hidden temporary directory and renamed into place, so a
crash during a save leaves the previous checkpoint as the newest complete one. Layout:

    step-N/model/            HF `save_pretrained` (safetensors): loadable by from_pretrained
    step-N/trainer_state.pt  optimizer, scheduler and RNG states (tensors only: weights_only load)
    step-N/state.json        step, data-loader state, and any component's JSON state
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from mixweight.errors import MixweightError
from mixweight.train.parallel import load_optimizer_state

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary directories never match the pattern)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir, step: int, model, model_state: dict, optimizer_state: dict, scheduler, state: dict,
                    keep: int) -> Path:
    """Write step-N atomically, then drop all but the `keep` newest checkpoints.

    `model` is the unwrapped HF model (for its config); the states are full, unsharded ones.
    """
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp", dir=root))
    try:
        model.save_pretrained(tmp / "model", state_dict=model_state, safe_serialization=True)
        torch.save(
            {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "trainer_state.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / f"step-{step}"
    if final.exists():  # a resumed run re-saving a step it already had
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(path: Path) -> None:
    """Flush file contents before the rename makes them visible as a complete checkpoint."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def read_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MixweightError(f"checkpoint {checkpoint}: cannot read state.json ({exc})") from exc


def load_trainer_state(checkpoint: str | Path, model, optimizer, scheduler) -> None:
    path = Path(checkpoint) / "trainer_state.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise MixweightError(f"checkpoint {checkpoint}: cannot load trainer_state.pt ({exc})") from exc
    try:
        load_optimizer_state(model, optimizer, blob["optimizer"])
    except (ValueError, KeyError) as exc:
        raise MixweightError(
            f"checkpoint {checkpoint}: its optimizer state does not fit this model ({exc}); "
            "was it written by a run with another --model?"
        ) from exc
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
