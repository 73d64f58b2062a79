"""JSON files: written atomically (a reader sees the old file or the new one, never half of one), read strictly
(a duplicate key, an integer of more than MAX_INT_DIGITS digits, bad bytes or bad JSON: one line naming the file).

The text goes to a temporary name beside the target and is renamed over it; a write that fails (a full
disk, a read-only filesystem) removes its temporary, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixweight.errors import MixweightError, brief

MAX_INT_DIGITS = 300  # longer integer literals are read as floats (inf beyond 1e308), not as giant ints


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # nothing was created there (a read-only filesystem)
        raise
    return path


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)  # json would keep the last one silently: a hand edit that went wrong
        out[key] = value
    return out


def _parse_int(text: str):
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else float(text)


def read_json(path: str | Path, what: str = "domain weights file"):
    """The JSON in `path`; any defect is a one-line MixweightError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MixweightError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise MixweightError(f"{what} {path}: cannot be read ({exc.strerror})") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_parse_int)
    except _DuplicateKey as exc:
        raise MixweightError(
            f"{what} {path}: key {brief(exc.args[0], 80)} appears twice in one object; "
            "keep one (JSON readers disagree on which wins)"
        ) from None
    except json.JSONDecodeError as exc:
        raise MixweightError(f"{what} {path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise MixweightError(f"{what} {path}: nested too deeply to be a weights file") from None
