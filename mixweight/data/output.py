"""Writing a corpus directory safely: build it beside the target, then swap it in.

A crash mid-write leaves the previous corpus (if any) untouched and only a
``.<name>.partial-*`` directory behind, which the next run removes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mixweight.data.manifest import MANIFEST_NAME
from mixweight.errors import MixweightError


def existing_corpus_hash(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text()).get("config_hash")
    except (OSError, json.JSONDecodeError):
        return None


def is_same_corpus(out_dir: Path, config_hash: str) -> bool:
    """True when `out_dir` already holds exactly the corpus this config would write."""
    return existing_corpus_hash(out_dir) == config_hash


def check_can_write(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a directory holding something else, unless asked to."""
    if not out_dir.exists() or overwrite:
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    what = "a different corpus" if (out_dir / MANIFEST_NAME).exists() else "other files"
    raise MixweightError(
        f"{out_dir}: already holds {what}; choose another --out, or pass --overwrite to replace it"
    )


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it atomically becomes `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = None
    if out_dir.exists():
        retired = out_dir.parent / f".{out_dir.name}.partial-retired"
        shutil.rmtree(retired, ignore_errors=True)
        out_dir.rename(retired)
    staging.rename(out_dir)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
