"""Cached pipeline stages: a stage reruns only when its inputs or config change, and never loses work.

A stage's key is the hash of its own config (`values`) and the keys of the stages it reads
from (`inputs`), so changing one arm reruns that arm alone, and changing the data reruns
everything. `STAGE_DIR/.stage.json` records the key, the values and inputs it was made from,
and whether the stage finished. Each stage is in one of these states (`Stage.plan`):

- new:      no directory (or an empty one): run it;
- done:     same key, finished: skipped;
- resume:   same key, unfinished (interrupted): run again, the stage resumes from its checkpoints;
- extend:   only keys the stage declares resumable changed (a training arm's steps, eval and
            checkpoint intervals: the trainer's RESUMABLE_CHANGES), so it continues in place;
- changed:  anything else changed (or the directory was not made by this pipeline). Nothing is
            deleted: the pipeline stops and names the changed keys, and with --rerun-changed it
            moves the old directory aside as `<dir>.replaced-<UTC time>-<changed keys>` and
            runs the stage afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mixweight.core.blocks import dotted_keys
from mixweight.core.distributed import is_main_process
from mixweight.core.jsonio import write_json_atomic

MARKER = ".stage.json"
NEW, DONE, RESUME, EXTEND, CHANGED = "new", "done", "resume", "extend", "changed"


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def as_stored(value):
    """`value` as the marker file stores it (JSON types), so a saved and a fresh config compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class Plan:
    state: str
    changes: list[str] = field(default_factory=list)  # "key: old -> new" for every changed value or input
    changed_keys: list[str] = field(default_factory=list)


@dataclass
class Stage:
    name: str
    directory: Path
    values: dict  # the stage's own config (what a user edits)
    inputs: dict  # upstream stage name -> that stage's key
    steps: int  # work estimate for the pipeline's ETA (optimizer steps; 0 for quick stages)
    action: Callable[[], None]
    # Decides whether a finished or interrupted stage may continue in place after `changed` keys changed
    # (None: no change is resumable). Given the saved and the new values.
    resumable: Optional[Callable[[dict, dict, list[str]], bool]] = None
    # The saved values and inputs of a marker an older mixweight wrote, in today's spelling (renamed keys): the same
    # config spelled as it was then is the same stage.
    upgrade: Optional[Callable[[dict, dict], tuple[dict, dict]]] = None

    @property
    def key(self) -> str:
        return stage_key(self.values, self.inputs)

    def state(self) -> dict:
        try:
            state = json.loads((self.directory / MARKER).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return state if isinstance(state, dict) else {}

    def plan(self) -> Plan:
        state = self.state()
        if not state:
            occupied = self.directory.is_dir() and any(self.directory.iterdir())
            if occupied:  # not made by this pipeline (or a marker we cannot read): never ours to reuse or delete
                return Plan(CHANGED, [f"{self.directory} holds files but no readable {MARKER}"], ["unknown"])
            return Plan(NEW)
        if state.get("key") == self.key:
            return Plan(DONE if state.get("finished") else RESUME)
        old_values, old_inputs = state.get("values"), state.get("inputs")
        if not isinstance(old_values, dict) or not isinstance(old_inputs, dict):
            return Plan(CHANGED, ["made by an older mixweight that did not record its config"], ["unknown"])
        if self.upgrade is not None:
            old_values, old_inputs = (as_stored(part) for part in self.upgrade(old_values, old_inputs))
            if stage_key(old_values, old_inputs) == self.key:
                return Plan(DONE if state.get("finished") else RESUME)
        new_values, new_inputs = as_stored(self.values), as_stored(self.inputs)
        old_flat, new_flat = dotted_keys(old_values), dotted_keys(new_values)  # a block's change names its key
        changed = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))
        changes = [f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in changed]
        inputs = sorted(k for k in set(old_inputs) | set(new_inputs) if old_inputs.get(k) != new_inputs.get(k))
        changes += [f"input '{k}' changed" for k in inputs]
        if not inputs and self.resumable is not None and self.resumable(old_values, new_values, changed):
            return Plan(EXTEND, changes, changed)
        return Plan(CHANGED, changes, changed + inputs)

    def move_aside(self, plan: Plan) -> Path:
        """Rename the directory to a sibling whose name says when and what changed; returns the new path."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        what = re.sub(r"[^A-Za-z0-9_+-]", "_", "+".join(plan.changed_keys))[:60] or "changed"
        target = self.directory.with_name(f"{self.directory.name}.replaced-{stamp}-{what}")
        counter = 1
        while target.exists():
            target = self.directory.with_name(f"{self.directory.name}.replaced-{stamp}-{what}-{counter}")
            counter += 1
        self.directory.rename(target)
        return target

    def run(self) -> None:
        """Every rank runs the action (training is collective); rank 0 alone writes the marker."""
        main = is_main_process()
        self.directory.mkdir(parents=True, exist_ok=True)
        marker = {"key": self.key, "values": as_stored(self.values), "inputs": as_stored(self.inputs)}
        if main:
            write_json_atomic(self.directory / MARKER, {**marker, "finished": False})
        self.action()
        if main:
            write_json_atomic(self.directory / MARKER, {**marker, "finished": True})
