"""The run directory's rules: one writer at a time, inputs pinned by content, nothing foreign replaced.

    RUN/.lock          fcntl.flock held by the main process for the run's life; names the holder (pid, host)
    RUN/config.yaml    the resolved config; its first line marks it as written by mixweight; written atomically
    RUN/inputs.json    sha256 of what the config's paths held when the run began (corpus, model spec, weights)

Paths in a config can keep their names while their contents change (a weights file edited in
place, a corpus regenerated in place); inputs.json makes such a change a config change on
--resume. Every check here reads only: nothing is written into --out until all of them pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

from mixweight.core.config import config_dict, dotted_keys
from mixweight.core.jsonio import write_text_atomic
from mixweight.core.locks import DirectoryLock
from mixweight.core.outputs import RUN, RUN_MARKER, check_output_path
from mixweight.core.yamlio import load_yaml
from mixweight.data.manifest import shards_stamp
from mixweight.data.remote import remote_of
from mixweight.errors import MixweightError, first_line
from mixweight.train.config import TrainConfig, saved_config_values

CONFIG_NAME = "config.yaml"
INPUTS_NAME = "inputs.json"
LOCK_NAME = ".lock"
# written after config.yaml, replaced by a new start (domain_weights.json: online mixing's trajectory)
RUN_FILES = ("metrics.jsonl", "eval.json", INPUTS_NAME, "domain_weights.json")
CONFIG_MARKER = RUN_MARKER  # config.yaml's first line: this file, and its directory, are a run mixweight wrote

# Keys that may change when resuming: they do not alter the training trajectory. `out` changes when a
# run directory is moved or copied, which is normal; `steps` may only grow (checked against the checkpoint).
RESUMABLE_CHANGES = {
    "out",
    "resume",
    "progress",
    "steps",
    "eval_every",
    "eval_blocks",
    "eval_batch_size",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "report_to",
}
# Keys whose default changed: a saved config without the key was written before it existed, and its run had the
# value of then (not today's default). The warm-up: 0 before the curriculum became the default (0.2).
DEFAULTS_OF_BEFORE = {"sample_weighting.warmup_steps": 0}
# The sample-weighting schedule's keys act only on a sample-weighted run: between two runs on the plain mean
# (sample_weighting none or uniform) they change nothing, so they are not compared.
SAMPLE_WEIGHTING_KEYS = tuple(f"sample_weighting.{key}" for key in ("r", "schedule", "start", "warmup_steps", "cap"))
PLAIN_MEAN = ("none", "uniform")
CONFIG_KEY_OF_INPUT = {
    "corpus": "data",
    "corpus_shards": "data",
    "model": "model",
    "domain_weights": "domain_weights",
    "doremi_reference": "mixing.doremi.reference",
}


# --- one writer ---------------------------------------------------------------------------------
class RunLock(DirectoryLock):
    """An exclusive flock on RUN/.lock (mixweight.core.locks): the kernel drops it when the holder exits, even on
    kill -9, so a stale file never blocks a later run. A run refused before it wrote anything leaves no lock
    file (nor the directory, when it made it); once the run has written (`keep`), the file stays."""

    def __init__(self, run_dir: str | Path):
        super().__init__(
            Path(run_dir) / LOCK_NAME,
            lambda holder: (
                f"{run_dir}: another mixweight process is writing this run ({holder}); wait for it to end, "
                "or choose another --out"
            ),
        )


# --- nothing foreign replaced ------------------------------------------------------------------
CORE_KEYS = {"data", "out", "model", "steps", "batch_size", "lr", "seed"}


def _written_by_mixweight(config_path: Path, field_names: set[str]) -> bool:
    """Our marker line, or (runs from before the marker) a complete resolved config: every field, nothing else."""
    try:
        text = config_path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if text.startswith(CONFIG_MARKER):
        return True
    try:
        saved = load_yaml(text)
    except yaml.YAMLError:
        return False
    # Keys added to mixweight since such a run began are absent from its file, so a subset is accepted,
    # provided the keys every train config has always had are there.
    return isinstance(saved, dict) and CORE_KEYS <= set(saved) <= field_names


def check_out_dir(run_dir: Path, config) -> None:
    """--out must be a directory that is new or a mixweight run: mixweight never overwrites a file it did not create."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MixweightError(f"--out {run_dir}: exists and is not a directory; choose a directory for the run")
    # never inside a corpus or another run; its own files are checked below
    check_output_path(config.out, "--out", kind="dir", what="the run directory", owned=lambda path: True, store=RUN)
    config_path = run_dir / CONFIG_NAME
    names = {f.name for f in dataclasses.fields(config)} | set(TrainConfig.RENAMED_KEYS)  # a flat file of before
    if config_path.is_file() and not config_path.read_bytes().strip():
        raise MixweightError(
            f"{config_path}: is empty (a write cut short?); restore the run's config.yaml, or choose another --out"
        )
    if not config_path.exists() and not (run_dir / "checkpoints").is_dir():
        # a run writes config.yaml before anything else, so these files without one were not written by a run
        theirs = [name for name in RUN_FILES if (run_dir / name).exists()]
        if theirs:
            raise MixweightError(
                f"{run_dir}: holds {', '.join(theirs)} but no {CONFIG_NAME}, so it is not a mixweight run directory; "
                "a run would replace those files and never replaces a file it did not create: choose another --out"
            )
    if config_path.exists() and not _written_by_mixweight(config_path, names):
        raise MixweightError(
            f"{config_path}: exists and was not written by mixweight train (e.g. your own --config); a run writes its "
            "resolved config there and never overwrites a file it did not create: choose another --out"
        )


def write_run_files(run_dir: Path, config, inputs: dict) -> None:
    from mixweight.core.config import to_yaml

    write_text_atomic(run_dir / CONFIG_NAME, CONFIG_MARKER + "\n" + to_yaml(config))
    write_text_atomic(run_dir / INPUTS_NAME, json.dumps(inputs, indent=2) + "\n")


# --- inputs pinned by content ------------------------------------------------------------------
def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def corpus_hash(corpus: str | Path, manifest) -> str:
    """sha256 of manifest.json and every stream's index.json (shard names, sizes, sample counts).

    Not the shard bytes themselves (gigabytes for a real corpus): a corpus written again in place
    changes its manifest or its shard sizes, and a shard changed behind its index is refused on read.
    """
    corpus = Path(corpus)
    digest = hashlib.sha256((corpus / "manifest.json").read_bytes())
    for split in sorted(manifest.splits):
        for domain in manifest.domains:
            index = manifest.stream_dir(corpus, split, domain) / "index.json"
            digest.update(f"\0{split}/{domain}\0".encode())
            digest.update(index.read_bytes() if index.is_file() else b"missing")
    return digest.hexdigest()


def input_hashes(config, corpus: str | Path, manifest, phases, spec: dict) -> dict:
    """What the config's paths held: the corpus, the model spec (its parsed keys) and the domain weights
    (the phases they resolve to: a schedule's nested files count, whitespace and provenance do not)."""
    hashes = {
        "corpus": {"path": str(corpus), "sha256": corpus_hash(corpus, manifest)},
        "model": {"spec": config.model, "sha256": _sha256_json(spec)},
        "domain_weights": {
            "spec": config.domain_weights,
            "sha256": _sha256_json([dataclasses.asdict(p) for p in phases]),
        },
    }
    if remote_of(corpus) is None:  # a URL's cache copy fills with training shards as they are read: not pinned
        # the shard files' sizes and modification times: bytes edited in place (the same size) are a change too
        hashes["corpus_shards"] = {"path": str(corpus), "sha256": shards_stamp(corpus, manifest)}
    reference = config.mixing.options("doremi").reference if "doremi" in config.mixing.mixers else None
    if reference is not None:  # online DoReMi: a reference run trained further is another reference
        hashes["doremi_reference"] = {"path": str(reference), "sha256": reference_hash(reference)}
    return hashes


def reference_hash(run_dir: str | Path) -> str:
    """sha256 of a reference run's newest checkpoint: its name, state.json and model config (not the weights'
    bytes: a run trained further has a newer checkpoint; a checkpoint rewritten in place changes its state)."""
    from mixweight.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    digest = hashlib.sha256(str(None if latest is None else latest.name).encode())
    for name in ("state.json", "model/config.json"):
        path = None if latest is None else latest / name
        digest.update(b"\0" + (path.read_bytes() if path is not None and path.is_file() else b"missing"))
    return digest.hexdigest()


def current_inputs(config) -> dict:
    """input_hashes for `config`, resolving everything itself (for callers without a built run)."""
    from mixweight.core.distributed import is_main_process
    from mixweight.core.model import load_spec
    from mixweight.data.corpus import open_corpus
    from mixweight.train.online import resolve_phases

    corpus = open_corpus(config.data, is_main_process())  # the local copy train() reads (a URL's cache copy)
    manifest = corpus.manifest
    phases = resolve_phases(manifest, config)  # online mixing: its prior
    return input_hashes(config, corpus.directory, manifest, phases, load_spec(config.model))


def _saved_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise MixweightError(
            f"{run_dir}: holds checkpoints but no {CONFIG_NAME}, so --resume cannot check it "
            "continues the same run; restore the run's config.yaml, or start afresh in a new --out"
        )
    try:
        saved = load_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MixweightError(f"{path}: not valid YAML ({first_line(exc)}); restore the run's config.yaml") from exc
    if not isinstance(saved, dict) or not saved:
        raise MixweightError(
            f"{path}: empty or not a mapping of keys to values; restore the run's config.yaml, "
            "or start afresh in a new --out"
        )
    return saved


def _saved_inputs(run_dir: Path) -> dict:
    """A run from before inputs.json has none: only its paths can be compared."""
    path = run_dir / INPUTS_NAME
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MixweightError(f"{path}: unreadable ({exc}); restore it, or start afresh in a new --out") from exc
    return saved if isinstance(saved, dict) else {}


def config_changes(run_dir: str | Path, config, inputs: dict | None = None) -> str:
    """The trajectory-changing differences between a run's saved config and inputs and `config` ('' if none)."""
    run_dir = Path(run_dir)
    saved = dotted_keys(saved_config_values(_saved_config(run_dir), str(run_dir / CONFIG_NAME)))
    current = dotted_keys(config_dict(config))
    # A key the saved config lacks was added to mixweight after the run began: the run had its default of then.
    defaults = dotted_keys(config_dict(TrainConfig()))
    saved = {**defaults, **DEFAULTS_OF_BEFORE, **saved}
    ignored = set(RESUMABLE_CHANGES)
    plain = (saved.get("sample_weighting.name"), current.get("sample_weighting.name"))
    if all(name in PLAIN_MEAN for name in plain):
        ignored.update(SAMPLE_WEIGHTING_KEYS)
    changed = sorted(k for k in current if k not in ignored and saved.get(k) != current[k])
    details = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed]
    saved_inputs = _saved_inputs(run_dir)
    if saved_inputs:
        inputs = inputs if inputs is not None else current_inputs(config)
        for name, now in inputs.items():
            before = saved_inputs.get(name)
            renamed = CONFIG_KEY_OF_INPUT.get(name, name) in changed  # a new path is already named above
            if isinstance(before, dict) and before.get("sha256") != now["sha256"] and not renamed:
                where = now.get("path") or now.get("spec")
                details.append(
                    f"{name}: the contents of {where} changed since the run began "
                    f"(sha256 {str(before.get('sha256'))[:12]} -> {now['sha256'][:12]})"
                )
    return ", ".join(details)
