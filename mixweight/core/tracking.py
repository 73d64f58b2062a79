"""Experiment trackers: every metrics.jsonl record mirrored to TensorBoard, Weights & Biases or MLflow.

    report_to (config) -> check names and packages (at config load, before anything is written)
    -> open_trackers (main process, once the run directory is made consistent) -> MetricsLog.write
    mirrors each record: flatten() names its numbers (the one place names are made) -> each backend

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

import dataclasses
import importlib.util
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixweight.core.jsonio import write_json_atomic
from mixweight.core.outputs import check_output_path
from mixweight.errors import MixweightError, did_you_mean, first_line

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXTRA = "pip install 'mixweight[tracking]'"
STATE_FILE = "trackers.json"
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: `tensorboard --logdir RUN` finds it
DEFAULT_PROJECT = "mixweight"  # W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME


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


# --- names: a metrics record -> tracker scalars and histograms ------------------------------------
@dataclass
class Histogram:
    edges: list[float]  # finite: the open last bin is closed at the step's largest value
    counts: list[int]
    minimum: float
    maximum: float
    total: float
    sum_squares: float


# Per-domain fields of a step record: field -> name, {d} the domain.
STEP_DOMAIN_NAMES = {
    "loss": "train/{d}/loss",
    "share": "train/{d}/share",
    "weight_x_n": "sample_weights/{d}/weight_x_n",
}
MIXTURE_NAMES = {"target": "mixture/{d}/target", "achieved": "mixture/{d}/achieved", "samples": "mixture/{d}/samples"}


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None  # strings (worst_domain), None (a DoGE score of an absent domain), lists


def _leaves(prefix: str, value, out: dict[str, float]) -> None:
    """Every number under `value`, named prefix/key/key...; the rule for fields without their own rule."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _leaves(f"{prefix}/{key}", inner, out)
    elif (number := _number(value)) is not None:
        out[prefix] = number


def _per_domain(table: dict, prefix: str, names: dict[str, str], out: dict[str, float]) -> None:
    """{domain: {field: number}} -> names[field] with the domain filled in, else prefix/<domain>/<field>."""
    for domain, fields in table.items():
        for key, value in fields.items():
            if (number := _number(value)) is not None:
                # replace, not format: a domain name may hold "{"
                out[names.get(key, prefix + "/{d}/" + key).replace("{d}", domain)] = number


def _histogram(weights: dict) -> Histogram | None:
    raw = weights.get("histogram_x_n")
    if not raw:
        return None
    counts = [int(c) for c in raw["counts"]]
    edges = [float(e) for e in raw["edges"]]
    n = sum(counts)
    maximum = float(weights.get("max_weight_x_n", edges[-2]))
    if not math.isfinite(edges[-1]):
        edges[-1] = max(maximum, edges[-2] + 1.0)
    first = next((i for i, c in enumerate(counts) if c), 0)
    ess = float(weights.get("ess_fraction") or 0.0)
    # N*w sums to N (the weights sum to 1) and sum (N*w)^2 = N^2 sum w^2 = N / ess_fraction: exact from the stats.
    return Histogram(edges, counts, edges[first], maximum, float(n), n / ess if ess > 0 else 0.0)


# A step objective's own record key -> its tracker names ({name: value}); registered where the objective is
# defined (DoReMi's `domain_weights` and `excess_loss`, DoGE's `doge`), so this module names no method.
RECORD_NAMES: dict[str, Callable[[Any], dict[str, Any]]] = {}
RENAMED_RECORD_KEYS = {"objective": "weighted_loss"}  # metrics.jsonl keys of older runs -> their names now


def register_record_names(key: str, names: Callable[[Any], dict[str, Any]]) -> None:
    """Name the numbers of a metrics record's `key` for the trackers (unregistered keys go under train/KEY/...)."""
    RECORD_NAMES[key] = names


def flatten(record: dict) -> tuple[int, dict[str, float], dict[str, Histogram]]:
    """(step, scalars, histograms) of one metrics.jsonl record, under the names the README lists."""
    scalars: dict[str, float] = {}
    histograms: dict[str, Histogram] = {}
    for key, value in record.items():
        if key == "step":
            continue
        key = RENAMED_RECORD_KEYS.get(key, key)
        if key == "eval":
            _per_domain(value.get("domains", {}), "eval", {}, scalars)
            for name, inner in value.items():
                if name != "domains" and (number := _number(inner)) is not None:
                    scalars[f"eval/{name}"] = number
        elif key == "weights":
            for name, inner in value.items():
                if (number := _number(inner)) is not None:
                    scalars[f"sample_weights/{name}"] = number
            if (histogram := _histogram(value)) is not None:
                histograms["sample_weights/histogram_x_n"] = histogram
        elif key == "domains":
            _per_domain(value, "train", STEP_DOMAIN_NAMES, scalars)
        elif key == "mixture":
            scalars["mixture/phase"] = float(value.get("phase", 0))
            _per_domain(value.get("domains", {}), "mixture", MIXTURE_NAMES, scalars)
        elif key == "time":
            _leaves("train", value, scalars)
        elif key in RECORD_NAMES:
            for name, inner in RECORD_NAMES[key](value).items():
                if (number := _number(inner)) is not None:
                    scalars[name] = number
        else:
            _leaves(f"train/{key}", value, scalars)
    return int(record["step"]), scalars, histograms


def _order(record: dict) -> list[int]:
    """A record's place in the run: its step, then train record before evaluation."""
    return [int(record["step"]), 1 if "eval" in record else 0]


# --- backends -----------------------------------------------------------------------------------
def _import(name: str):
    try:
        return __import__(name)
    except ImportError as exc:  # checked at config load; this is a broken install
        raise MixweightError(f"report_to {name}: cannot import {name} ({first_line(exc)}); {EXTRA}") from exc


def _run_name(run_dir: Path) -> str:
    return "/".join(run_dir.resolve().parts[-2:])  # runs/uniform-seed0, round-0/proxy: enough to tell them apart


def _quiet_writer_threads() -> None:
    """TensorBoard writes events from a thread of its own: a write that fails there (a full disk) would print a
    thread traceback; the failure reaches the run at the next flush instead (a dropped tracker, one warning)."""
    if getattr(threading.excepthook, "mixweight_quiet", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if args.thread is not None and "tensorboard" in type(args.thread).__module__:
            return
        previous(args)

    hook.mixweight_quiet = True
    threading.excepthook = hook


class TensorBoardTracker:
    """RUN/tensorboard/ event files. purge_step: readers drop the earlier events at and past it."""

    guarded = False  # it handles a resume itself, by purge_step

    def __init__(self, run_dir: Path, state: dict, start_step: int, config: dict):
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        log_dir = run_dir / TENSORBOARD_DIR
        check_output_path(
            log_dir, "report_to tensorboard:", kind="dir", what="its event files", owned=lambda _: True, inside=run_dir
        )
        new = not log_dir.is_dir()
        _quiet_writer_threads()
        # A start afresh drops every earlier event; a resume the events past its checkpoint.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=0 if start_step == 0 else start_step + 1)
        if new or start_step == 0:
            import yaml

            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.state = {"log_dir": TENSORBOARD_DIR}

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, Histogram]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        for name, h in histograms.items():
            self.writer.add_histogram_raw(
                name, h.minimum, h.maximum, h.total, h.total, h.sum_squares, h.edges[1:], h.counts, step
            )
        self.writer.flush()  # a killed run keeps every record it wrote to metrics.jsonl

    def close(self, finished: bool) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run whose id is kept in trackers.json; a resume reopens it (resume="allow")."""

    guarded = True

    def __init__(self, run_dir: Path, state: dict, start_step: int, config: dict):
        wandb = _import("wandb")
        self.wandb = wandb
        run_id = state.get("run_id") if start_step > 0 else None
        project = state.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        try:
            self.run = wandb.init(
                project=project,
                name=_run_name(run_dir),
                id=run_id,
                resume="allow",
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                config=None if run_id else config,
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as exc:  # noqa: BLE001 - no API key, no network, a bad project: wandb's own types
            raise MixweightError(
                f"report_to wandb: cannot start a W&B run ({first_line(exc)}); log in with "
                "'wandb login', or set WANDB_MODE=offline and 'wandb sync' later"
            ) from exc
        self.state = {"run_id": self.run.id, "project": project, "url": self.run.url}

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, Histogram]) -> None:
        data: dict = dict(scalars)
        for name, h in histograms.items():
            data[name] = self.wandb.Histogram(np_histogram=(h.counts, h.edges))
        self.run.log(data, step=step)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


MLFLOW_KEY = re.compile(r"[^\w\-. /:]")  # the characters MLflow refuses in metric and param names
MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def mlflow_key(name: str) -> str:
    return MLFLOW_KEY.sub("_", name)


class MlflowTracker:
    """An MLflow run (MlflowClient: no global active run) whose id and tracking URI are kept in trackers.json."""

    guarded = True

    def __init__(self, run_dir: Path, state: dict, start_step: int, config: dict):
        mlflow = _import("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        resuming = start_step > 0 and state.get("run_id")
        uri = state.get("tracking_uri") if resuming else mlflow.get_tracking_uri()
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if resuming:
                self.run_id = state["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
                run = self.client.create_run(
                    experiment_id, run_name=_run_name(run_dir), tags={"mixweight.run_dir": str(run_dir.resolve())}
                )
                self.run_id = run.info.run_id
                params = [Param(mlflow_key(k), str(v)[:6000]) for k, v in config.items()]
                for start in range(0, len(params), 100):  # MLflow's limit of params per call
                    self.client.log_batch(self.run_id, params=params[start : start + 100])
        except MixweightError:
            raise
        except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors
            raise MixweightError(f"report_to mlflow: tracking URI {uri}: {first_line(exc)}") from exc
        self.state = {"run_id": self.run_id, "tracking_uri": uri}

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, Histogram]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), v, now, step) for k, v in scalars.items()]
        for name, h in histograms.items():  # no histogram type: one count per bin
            metrics += [
                Metric(mlflow_key(f"{name}/{lo:g}-{hi:g}"), float(c), now, step)
                for lo, hi, c in zip(h.edges, h.edges[1:], h.counts)
            ]
        for start in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MLFLOW_BATCH])

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")


BACKENDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


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
    values = dataclasses.asdict(config)
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
