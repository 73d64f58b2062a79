"""OUT's ownership: the lock that keeps two pipelines out of one --out, OUT/pipeline.yaml (the config that made
the directory; an earlier one is kept as pipeline.replaced-<time>.yaml), and the --out check (new, empty or a
pipeline's own directory, outside every input).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from mixweight.core.distributed import is_main_process
from mixweight.core.locks import DirectoryLock
from mixweight.core.outputs import check_output_path
from mixweight.core.yamlio import load_yaml
from mixweight.data.remote import is_url
from mixweight.errors import MixweightError
from mixweight.pipeline.config import PipelineConfig, data_form, in_todays_spelling

CONFIG_FILE = "pipeline.yaml"
LOCK_FILE = ".pipeline.lock"


@contextmanager
def pipeline_lock(out: Path):
    """An exclusive lock on OUT for this process (rank 0 under torchrun), naming the holder to whoever waits;
    yields the DirectoryLock (None on the other ranks). Until `keep()` (the pipeline has written pipeline.yaml)
    a refusal leaves neither the lock file nor the directories it made."""
    if not is_main_process():
        yield None
        return
    lock = DirectoryLock(
        out / LOCK_FILE,
        lambda holder: (
            f"{out}: another pipeline is running in this directory ({holder}); wait for it to finish, "
            "or choose another --out"
        ),
        holder="pid {pid} on host {host}",
    )
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def _config_text(config: PipelineConfig) -> str:
    """The YAML's own layout: data, train, one section per method, then the rest (progress is display only)."""
    recorded = {}
    for key, value in dataclasses.asdict(config).items():
        if key == "methods":
            recorded.update(value)
        elif key != "progress":
            recorded[key] = value
    return yaml.safe_dump(recorded, sort_keys=False)


def record_config(config: PipelineConfig, out: Path) -> None:
    """OUT/pipeline.yaml: the config that made this directory; a different earlier one is kept beside it (the same
    config in an older mixweight's spelling is rewritten in today's)."""
    path, text = out / CONFIG_FILE, _config_text(config)
    if path.is_file():
        old = path.read_text()
        if old == text:
            return
        try:
            previous = load_yaml(old)
        except yaml.YAMLError:
            previous = None
        previous = _todays_spelling(previous) if isinstance(previous, dict) else {}
        current = load_yaml(text)
        sections = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if sections:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            kept = out / f"pipeline.replaced-{stamp}.yaml"
            path.rename(kept)
            print(
                f"[pipeline] config differs from the one that made {out} (sections: {', '.join(sections)}); "
                f"the earlier config is kept as {kept.name}",
                flush=True,
            )
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _todays_spelling(record: dict) -> dict:
    """A recorded config as today's mixweight reads it (its flat train keys of before in their blocks); a record
    it cannot read so is compared as written."""
    try:
        return in_todays_spelling(record, CONFIG_FILE, quiet=True)
    except MixweightError:
        return record


def is_pipeline_dir(path: Path) -> bool:
    """owned(path) for --out: it holds the pipeline.yaml a pipeline records first (a mapping), or only the lock
    file a refused pipeline of an older mixweight left."""
    record = path / CONFIG_FILE
    if record.is_file():
        try:
            return isinstance(load_yaml(record.read_text(encoding="utf-8")), dict)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
    return {p.name for p in path.iterdir()} <= {LOCK_FILE}


def check_pipeline_out(config: PipelineConfig, out: str | Path) -> None:
    """--out new, empty or a pipeline's own directory, outside every corpus, run and input (core.outputs)."""
    kind, form, _ = data_form(config.data)
    inputs = [("data.prepare.input", getattr(form, "input", None))]
    if kind == "path" and not is_url(form.dir):
        inputs.append(("data.path", form.dir))
    check_output_path(
        out, "pipeline --out", kind="dir", what="the pipeline directory", owned=is_pipeline_dir, inputs=inputs
    )
