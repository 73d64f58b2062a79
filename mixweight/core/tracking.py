"""Experiment trackers: every metrics.jsonl record mirrored to TensorBoard, Weights & Biases or MLflow.

    report_to (config) -> check names and packages (at config load, before anything is written)
    -> open_trackers (main process, once the run directory is made consistent) -> MetricsLog.write
    mirrors each record: flatten() names its numbers (tracker_names.py: the one place names are made)
    -> each backend (tracker_backends.py)

metrics.jsonl stays the run's own record (`mixweight compare` reads only it); a tracker is a
view. Each tracker is imported only when asked for. `RUN/trackers.json` holds what a resume
needs to continue the same tracker run: the W&B run id, the MLflow run id and tracking URI, and
the last record W&B and MLflow were given. A resume starts from a checkpoint and writes again
the records past it, with the same values (resume is exact): TensorBoard drops its own later
events (purge_step), W&B and MLflow skip records at or before the last one they have (W&B
refuses steps that go back). A tracker that fails mid-run is dropped with one warning line:
training goes on and metrics.jsonl has every record; so is TensorBoard when its directory cannot be
written at the start (a file in the way, a read-only or full disk).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mixweight.core.blocks import config_dict
from mixweight.core.jsonio import write_json_atomic
from mixweight.core.tracker_backends import BACKENDS, EXTRA, TENSORBOARD_DIR
from mixweight.core.tracker_names import flatten
from mixweight.errors import MixweightError, did_you_mean, first_line

TRACKERS = ("tensorboard", "wandb", "mlflow")
STATE_FILE = "trackers.json"


# --- the report_to value ------------------------------------------------------------------------
def parse_report_to(value) -> list[str]:
    """`report_to` as given (a list, "a,b", "none", None) -> the tracker names, in order, once each."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    names = []
    for item in (i.strip().lower() for i in items):
        if item and item != "none" and item not in names:
            names.append(item)
    return names


def check_report_to(names: list[str], where: str) -> None:
    """Unknown names and trackers whose package is missing: one line each, before anything runs."""
    for name in names:
        if name not in TRACKERS:
            hint = did_you_mean(name, TRACKERS)
            raise MixweightError(
                f"{where}: 'report_to' names an unknown tracker '{name}'; {hint}"
                f"choose from {', '.join(TRACKERS)} or none"
            )
        if importlib.util.find_spec(name) is None:
            raise MixweightError(
                f"{where}: report_to {name} needs the {name} package, which is not installed: "
                f"{EXTRA} (or pip install {name})"
            )


def _order(record: dict) -> list[int]:
    """A record's place in the run: its step, then train record before evaluation."""
    return [int(record["step"]), 1 if "eval" in record else 0]


# --- the run's trackers --------------------------------------------------------------------------
class Trackers:
    """The trackers of one run (main process only); MetricsLog hands it every record it writes."""

    def __init__(self, run_dir: Path, backends: dict, state: dict, final_step: int):
        self.run_dir, self.backends, self.state, self.final_step = run_dir, backends, state, final_step
        self.finished = False

    def log_record(self, record: dict) -> None:
        step, scalars, histograms = flatten(record)
        order, mark = _order(record), self.state.get("mark")
        for name, backend in list(self.backends.items()):
            if backend.guarded and mark is not None and order <= mark:
                continue  # it has this record from before the resume
            try:
                backend.log(step, scalars, histograms)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must not stop training
                print(
                    f"mixweight: warning: report_to {name}: stopped mirroring at step {step} ({first_line(exc)}); "
                    f"metrics.jsonl has every record",
                    file=sys.stderr,
                    flush=True,
                )
                del self.backends[name]
        if mark is None or order > mark:
            self.state["mark"] = order
            write_json_atomic(self.run_dir / STATE_FILE, self.state)
        self.finished = order == [self.final_step, 1]  # the final evaluation

    def close(self) -> None:
        for name, backend in self.backends.items():
            try:
                backend.close(self.finished)
            except Exception as exc:  # noqa: BLE001
                print(
                    f"mixweight: warning: report_to {name}: closing failed ({first_line(exc)})",
                    file=sys.stderr,
                    flush=True,
                )
        self.backends = {}


def open_trackers(config, run_dir: Path, start_step: int) -> Trackers | None:
    """The trackers `config.report_to` names, continuing the ones in RUN/trackers.json on a resume."""
    names = parse_report_to(config.report_to)
    if not names:
        return None
    saved = read_state(run_dir) if start_step > 0 else {}
    state: dict = {"mark": saved.get("mark")} if start_step > 0 else {}
    values = config_dict(config)  # blocks as mappings, as config.yaml holds them
    backends = {}
    try:
        for name in names:
            try:
                backend = BACKENDS[name](run_dir, saved.get(name) or {}, start_step, values)
            except (OSError, MixweightError) as exc:
                if name != "tensorboard":  # W&B and MLflow that cannot start: refused (docs/errors.md)
                    raise
                print(  # its event files cannot be written (a read-only or full disk, a file in the way)
                    f"mixweight: warning: report_to tensorboard: not mirrored ({first_line(exc)}); metrics.jsonl "
                    "has every record",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            backends[name] = backend
            state[name] = backend.state
    except BaseException:
        for backend in backends.values():
            backend.close(False)
        raise
    write_json_atomic(run_dir / STATE_FILE, state)
    return Trackers(run_dir, backends, state, config.steps)


def read_state(run_dir: str | Path) -> dict:
    """RUN/trackers.json ({} when absent or unreadable: it only links a run to its tracker runs)."""
    import json

    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def tracker_links(run_dir: str | Path) -> dict[str, str]:
    """tracker -> where its run is (for the report): the TensorBoard log dir, the W&B URL or id, the MLflow id."""
    state, links = read_state(run_dir), {}
    if "tensorboard" in state:
        links["tensorboard"] = str(Path(run_dir) / state["tensorboard"].get("log_dir", TENSORBOARD_DIR))
    if "wandb" in state:
        wandb = state["wandb"]
        links["wandb"] = wandb.get("url") or f"{wandb.get('project')}/{wandb.get('run_id')} (offline: `wandb sync`)"
    if "mlflow" in state:
        links["mlflow"] = f"run {state['mlflow'].get('run_id')} at {state['mlflow'].get('tracking_uri')}"
    return links
