"""Cached pipeline stages: a stage reruns only when its inputs or config change.

A stage's key is the hash of its own config and the keys of the stages it reads from,
so changing one arm reruns that arm alone, and changing the data reruns everything.
`RUN_DIR/.stage.json` records the key and whether the stage finished:
- same key, finished: skipped;
- same key, unfinished (interrupted): run again, and the stage resumes from its checkpoints;
- a different key: the old outputs are removed and the stage runs from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mixweight.jsonio import write_json_atomic

MARKER = ".stage.json"


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stage:
    name: str
    directory: Path
    key: str
    steps: int  # work estimate for the pipeline's ETA (optimizer steps; 0 for quick stages)
    action: Callable[[], None]

    def state(self) -> dict:
        try:
            return json.loads((self.directory / MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @property
    def done(self) -> bool:
        state = self.state()
        return state.get("key") == self.key and state.get("finished", False)

    def run(self) -> None:
        state = self.state()
        if state and state.get("key") != self.key:
            shutil.rmtree(self.directory)  # inputs changed: nothing here is valid any more
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / MARKER, {"key": self.key, "finished": False})
        self.action()
        write_json_atomic(self.directory / MARKER, {"key": self.key, "finished": True})
