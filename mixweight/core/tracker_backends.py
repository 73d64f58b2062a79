"""Tracker backends: TensorBoard, Weights & Biases and MLflow, each imported only when asked for.

A backend is built with (run_dir, its saved state from RUN/trackers.json, the start step, the config) and
has `state` (what a resume needs to continue the same tracker run), `guarded` (True: it cannot drop its
own later events, so mixweight.core.tracking skips the records it already has), `log(step, scalars,
histograms)` (the names of mixweight.core.tracker_names.flatten) and `close(finished)`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from mixweight.core.blocks import dotted_keys
from mixweight.core.outputs import check_output_path
from mixweight.core.tracker_names import Histogram
from mixweight.errors import MixweightError, first_line

EXTRA = "pip install 'mixweight[tracking]'"
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: `tensorboard --logdir RUN` finds it
DEFAULT_PROJECT = "mixweight"  # W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME


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
                params = [Param(mlflow_key(k), str(v)[:6000]) for k, v in dotted_keys(config).items()]
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
