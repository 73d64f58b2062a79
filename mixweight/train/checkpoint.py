"""Checkpoints in RUN/checkpoints/step-N/, written atomically.

A checkpoint is built in a hidden temporary directory and renamed into place, so a
crash during a save leaves the previous checkpoint as the newest complete one. Layout:

    step-N/model/            HF `save_pretrained` (safetensors): loadable by from_pretrained
    step-N/trainer_state.pt  optimizer, scheduler and RNG states (tensors only: weights_only load)
    step-N/state.json        step, data-loader state, and any component's JSON state

Re-saving a step that exists (a resumed run ending where it started) moves the old copy to
`.step-N.replaced` until the new one is in place; a kill between those two renames leaves
that copy as the step's only complete checkpoint, so it is listed (and restored by the next
save) rather than swept away with the temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from mixweight.errors import MixweightError, first_line
from mixweight.train.parallel import load_optimizer_state

STEP_DIR = re.compile(r"^step-(\d+)$")
REPLACED_DIR = re.compile(r"^\.step-(\d+)\.replaced$")  # never matches the temporary pattern .step-*.tmp*


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary directories never match the pattern)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in sorted(root.iterdir(), key=lambda p: REPLACED_DIR.match(p.name) is None):  # step-N wins
        match = STEP_DIR.match(path.name) or REPLACED_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found[int(match.group(1))] = path
    return sorted(found.items())


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


def save_checkpoint(
    run_dir, step: int, model, model_state: dict, optimizer_state: dict, scheduler, state: dict, keep: int
) -> Path:
    """Write step-N atomically, then drop all but the `keep` newest checkpoints.

    `model` is the unwrapped HF model (for its config); the states are full, unsharded ones.
    A failed write (disk full) is one error line; the checkpoints already there are untouched.
    """
    root = checkpoints_dir(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        _settle_replaced(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp", dir=root))
    except OSError as exc:
        raise _save_failed(run_dir, step, exc) from exc
    try:
        model.save_pretrained(tmp / "model", state_dict=model_state, safe_serialization=True)
        torch.save(
            {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "trainer_state.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        _fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(exc, root):
            raise _save_failed(run_dir, step, exc) from exc
        raise
    final = root / f"step-{step}"
    if final.exists():  # a resumed run re-saving a step it already had: the old copy goes only once the new is in
        old = root / f".step-{step}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _settle_replaced(root: Path) -> None:
    """Finish a re-save cut between its renames: restore the old copy, or drop it once step-N is back."""
    for path in root.iterdir():
        match = REPLACED_DIR.match(path.name)
        if match:
            final = root / f"step-{match.group(1)}"
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)


# torch.save and safetensors report a full disk as RuntimeError / SafetensorError, not OSError, in words that vary
# with where the write stopped (torch's zip writer: "iostream error", "unexpected pos"); a full disk counts too.
WRITE_FAILURE_TEXT = (
    "file write failed",
    "No space left",
    "StorageFull",
    "IoError",
    "Disk quota",
    "iostream error",
    "unexpected pos",
    "PytorchStreamWriter failed",
)


def _is_write_failure(exc: BaseException, root: Path | None = None) -> bool:
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, Exception):
        return False
    return any(t in str(exc) for t in WRITE_FAILURE_TEXT) or (root is not None and _disk_full(root))


def _disk_full(root: Path) -> bool:
    """Less than 1 MiB left for this user where the checkpoint is written (or the filesystem is read-only)."""
    try:
        info = os.statvfs(root)
    except OSError:
        return False
    return bool(info.f_flag & os.ST_RDONLY) or info.f_bavail * info.f_frsize < (1 << 20)


def _save_failed(run_dir, step: int, exc: BaseException) -> MixweightError:
    latest = latest_checkpoint(run_dir)
    kept = f"the newest complete checkpoint, {latest.name}, is intact" if latest else "no earlier checkpoint exists"
    return MixweightError(
        f"checkpoint step-{step}: could not be written in {checkpoints_dir(run_dir)} "
        f"({_reason(exc, checkpoints_dir(run_dir))}); {kept}; free space and rerun with --resume"
    )


def _reason(exc: BaseException, root: Path) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if _disk_full(root):  # torch's writer says "unexpected pos ...": say what happened
        return f"No space left on device; the writer said: {first_line(exc)}"
    return first_line(exc)


def _fsync_tree(path: Path) -> None:
    """Flush file contents before the rename makes them visible as a complete checkpoint."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def read_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MixweightError(f"checkpoint {checkpoint}: cannot read state.json ({exc})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise MixweightError(f"checkpoint {checkpoint}: state.json has no step count; it is not a mixweight checkpoint")
    return state


def read_resume_state(checkpoint: str | Path) -> dict:
    """state.json with everything --resume needs (the step and the data loader's position)."""
    state = read_state(checkpoint)
    if not isinstance(state.get("loader"), dict):
        raise MixweightError(
            f"checkpoint {checkpoint}: state.json has no data-loader state ('loader'), so the run cannot continue "
            "where it stopped; move this checkpoint aside to resume from the previous one, or start a new --out"
        )
    return state


def load_trainer_state(checkpoint: str | Path, model, optimizer, scheduler) -> None:
    path = Path(checkpoint) / "trainer_state.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise MixweightError(f"checkpoint {checkpoint}: trainer_state.pt is missing") from exc
    except Exception as exc:  # noqa: BLE001 - torch's own text would advise weights_only=False, i.e. running code
        raise MixweightError(
            f"checkpoint {checkpoint}: trainer_state.pt is not a mixweight checkpoint's trainer state "
            f"(it does not load as plain tensors: {type(exc).__name__}); it is never loaded any other way"
        ) from exc
    if not isinstance(blob, dict) or not {"optimizer", "scheduler", "rng"} <= set(blob):
        raise MixweightError(
            f"checkpoint {checkpoint}: trainer_state.pt is not a mixweight checkpoint's trainer state "
            "(expected optimizer, scheduler and rng entries)"
        )
    try:
        load_optimizer_state(model, optimizer, blob["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MixweightError(
            f"checkpoint {checkpoint}: its optimizer state does not fit this model ({exc}); "
            "was it written by a run with another --model?"
        ) from exc
    try:
        scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise MixweightError(
            f"checkpoint {checkpoint}: trainer_state.pt holds a bad scheduler or RNG state "
            f"({first_line(exc)}); it is damaged or not a mixweight checkpoint"
        ) from exc
