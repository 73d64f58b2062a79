"""Files written atomically: a reader sees the old file or the new one, never half of one.

The text goes to a temporary name beside the target and is renamed over it; a write that fails (a full
disk, a read-only filesystem) removes its temporary, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


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
