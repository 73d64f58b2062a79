"""metrics.jsonl: one JSON object per logged event, written by the main process only.

The file belongs to the run: a start without a checkpoint replaces it (a run killed before its
first checkpoint is redone from step 0, and its records would otherwise appear twice), and a
resume drops the records past the checkpoint (the resumed run writes them again). Rewrites go
to a temporary name first, so a kill during one leaves the old file.

`mirror` (mixweight.core.tracking.Trackers, set by the main process when `report_to` names trackers)
gets every record written here, so the trackers see exactly what metrics.jsonl holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixweight.errors import MixweightError


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool, mirror=None):
        self.path = Path(path)
        self.enabled = enabled
        self.mirror = mirror

    def close(self) -> None:
        """Close the trackers (a run that ended without its final evaluation is marked so there)."""
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None

    def start_afresh(self) -> int:
        """A run starting at step 0: drop the records of an earlier start; returns how many there were."""
        if not self.enabled or not self.path.exists():
            return 0
        try:
            dropped = sum(1 for line in self.path.read_text(errors="replace").splitlines() if line.strip())
        except OSError as exc:
            raise MixweightError(f"{self.path}: cannot read ({exc})") from exc
        self._rewrite([])
        return dropped

    def check(self) -> None:
        """Read-only: refuse a damaged file before the run writes anything (a partial last line is fine)."""
        if self.enabled and self.path.exists():
            self._records(tolerate_partial_end=True)

    def truncate_after(self, step: int) -> str | None:
        """On resume, drop records past the checkpoint; returns a note when a partial last line was dropped.

        A last line without its newline is a write cut short (disk full, kill): it is dropped and said so.
        A bad line anywhere else is damage mixweight did not make, and is refused.
        """
        if not self.enabled or not self.path.exists():
            return None
        records, partial = self._records(tolerate_partial_end=True)
        self._rewrite([r for r in records if r["step"] <= step])
        if partial:
            return f"{self.path}: dropped a partial last line (a write cut short, e.g. by a full disk)"
        return None

    def _records(self, tolerate_partial_end: bool) -> tuple[list[dict], bool]:
        try:
            text = self.path.read_text(errors="replace")
        except OSError as exc:
            raise MixweightError(f"{self.path}: cannot read ({exc})") from exc
        lines = text.split("\n")
        records, partial = [], False
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a record with a step")
            except ValueError as exc:
                if tolerate_partial_end and number == len(lines):  # no newline after it: the last write was cut
                    partial = True
                    continue
                raise MixweightError(
                    f"{self.path}: line {number} is not a metrics record ({exc}); the file was changed outside "
                    "mixweight: restore it or move it aside, then rerun"
                ) from exc
            records.append(record)
        return records, partial

    def _rewrite(self, records: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise MixweightError(
                f"{self.path}: cannot append step {record.get('step')} ({exc.strerror or exc}); free space and rerun "
                "with --resume (a partial last line is dropped then)"
            ) from exc
        if self.mirror is not None:
            self.mirror.log_record(record)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return self._records(tolerate_partial_end=True)[0]
