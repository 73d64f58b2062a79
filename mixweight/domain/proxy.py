"""The proxy runner every domain-weights method uses: train, resume or reuse a proxy run.

A weights method (DoReMi, DoGE, ...) is a `StepObjective` for an ordinary training run plus a
rule that turns the finished run into weights. What they all share lives here:

    train_or_reuse(config, objective)  one proxy run: reused when finished with the same config,
                                       resumed from its newest checkpoint when interrupted,
                                       otherwise trained; a finished run with another config stops
                                       with one line naming the changed keys
    claim_work_dir(...)                the work directory's record of the method's own options
                                       (those no TrainConfig holds): another config stops with one
                                       line naming the changed keys
    config_hash(...)                   the one hash of a method's weight-determining options
    provenance(...)                    the artifact's provenance, one schema for every method
    runs_compute(...)                  the artifact's compute: the training FLOPs of the runs that made it
    write_artifact(...)                main process only: health warnings, the file, the plots

What --out and the work directory may be (`check_outputs`, run by `start`) is proxy_outputs.py's.

docs/design.md ("Adding a weights method") describes the seam.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import ClassVar, Optional, Union

import yaml

import mixweight
from mixweight.core.artifact import DomainWeights
from mixweight.core.config import nest_moved_keys, nested, rename_keys, require
from mixweight.core.config import option as _f
from mixweight.core.distributed import is_main_process
from mixweight.core.model import load_spec
from mixweight.core.yamlio import load_yaml_file
from mixweight.data.corpus import SYNTHETIC_ALIAS, Corpus, open_corpus
from mixweight.data.manifest import Manifest
from mixweight.data.remote import is_url
from mixweight.domain.health import format_warning
from mixweight.domain.proxy_outputs import check_outputs
from mixweight.errors import MixweightError, did_you_mean
from mixweight.train import checkpoint as ckpt
from mixweight.train.compute import COMPUTE_KEY
from mixweight.train.config import TrainConfig
from mixweight.train.loop import config_changes, train


def _finished(run_dir: Path, steps: int) -> bool:
    latest = ckpt.latest_checkpoint(run_dir)
    return latest is not None and (run_dir / "eval.json").is_file() and ckpt.read_state(latest)["step"] == steps


def train_or_reuse(config: TrainConfig, objective=None) -> Path:
    """The proxy run `config.out`, finished: reused, resumed or trained. Returns the run directory.

    - finished (its final checkpoint and eval.json) with the same config (the trainer's own
      comparison, `config_changes`: config.yaml and the pinned inputs): reused, nothing trained;
    - finished with a different config: MixweightError naming the changed keys;
    - interrupted (a checkpoint, not the last): resumed from its newest checkpoint (the trainer
      refuses a resume whose config changed, naming the keys);
    - otherwise trained from scratch.

    With an `objective`, its state is then loaded from the run's newest checkpoint, so it is the
    same whether the run was trained now, resumed or reused. `config` is valid (validated where it
    was made).
    """
    run_dir = Path(config.out)
    if _finished(run_dir, config.steps):
        details = config_changes(run_dir, config)
        if details:
            raise MixweightError(
                f"{run_dir}: a finished run with a different config ({details}); delete it or choose another work_dir"
            )
    else:
        train(dataclasses.replace(config, resume=ckpt.latest_checkpoint(run_dir) is not None), objective)
    if objective is not None:
        objective.load_state_dict(ckpt.read_state(ckpt.latest_checkpoint(run_dir)).get("objective", {}))
    return run_dir


# --- a method's config: its own options + a `train:` block for its proxy runs ------------------------------

# Keys that change no weights: left out of the config hash and of the work directory's check, wherever they
# appear (a method's options or its train block). doge_impl: both forms compute the same gradients (to float
# rounding), so a run may resume with the other.
UNHASHED = frozenset({"data", "out", "work_dir", "progress", "report_to", "doge_impl"})
# TrainConfig keys (and whole blocks) a proxy's train block may not set: the method sets them (the value says why).
OWNED_TRAIN_KEYS = {
    "data": "the corpus is the method's --data",
    "out": "the proxy runs live in the method's --work-dir",
    "model": "the proxy model is the method's 'proxy'",
    "steps": "a proxy's steps are the method's 'steps'",
    "seed": "the seed is the method's 'seed'",
    "log_every": "the logging interval is the method's 'log_every' (it also paces the weights trajectory)",
    "domain_weights": "the method decides what its proxy runs sample",
    "domain_weights_every": "the method decides what its proxy runs sample",
    "resume": "a proxy run resumes by itself when it was interrupted",
    "max_epochs": (
        "a proxy run trains the mixture the method records, unprojected "
        "(weights regmix: its own --max-epochs caps the chosen mixture instead)"
    ),
    "sample_weighting": (
        "DoReMi and DoGE give their proxy runs their own step objective, and a swarm of sample-weighted runs would "
        "fit a law of another objective than the main run's mixture: set it on the main run"
    ),
    "mixing": "online domain mixing would replace the mixture the method decides for its proxy runs",
}
# TrainConfig keys that were top-level method keys before the train block: accepted for a release (deprecated).
MOVED_TRAIN_KEYS = (
    "batch_size",
    "grad_accum",
    "lr",
    "final_lr",
    "warmup_steps",
    "checkpoint_every",
    "progress",
    "report_to",
)
TRAIN_BLOCK_HELP = (
    "TrainConfig overrides for the proxy runs (YAML: a train: mapping; flags: --train.KEY); "
    "the method's own defaults fill the rest"
)


@dataclass
class ProxyMethodConfig:
    """What every proxy-based weights method's config holds; a method adds its own options and rules.

    Subclasses set COMMAND (the CLI command, for messages), NAME (the artifact's method name) and
    TRAIN_DEFAULTS (the train-block defaults where they differ from TrainConfig's), check their own
    options in `check_options`, and may extend `train_defaults`.
    """

    COMMAND: ClassVar[str] = "weights"
    NAME: ClassVar[str] = "proxy"
    TRAIN_DEFAULTS: ClassVar[dict] = {"eval_every": 0}

    data: Optional[str] = _f(
        None,
        "corpus directory (made by `mixweight data synth` or `data prepare`), a corpus URL "
        "(s3://, gs://, ..., file:///DIR; cached in --cache-dir), or `synthetic`; required",
    )
    out: Optional[str] = _f(None, "the domain weights JSON file to write; required")
    proxy: str = _f("gpt2-tiny", "proxy model spec: a name in proxies/ or a path to an HF config JSON")
    steps: int = _f(200, "optimizer steps of each proxy run")
    seed: int = _f(0, "seed for model init and data order of every proxy run")
    work_dir: Optional[str] = _f(None, "directory of the proxy runs (default: <out stem>.work/ next to out)")
    log_every: int = _f(10, "record the domain weights in the trajectory (and the runs' metrics) every N steps")
    train: dict = nested(TrainConfig, TRAIN_BLOCK_HELP, moved=MOVED_TRAIN_KEYS, owned=OWNED_TRAIN_KEYS)
    # The Python spelling of the deprecated top-level keys (YAML and flags are handled where they are read).
    batch_size: InitVar[Optional[int]] = None
    grad_accum: InitVar[Optional[int]] = None
    lr: InitVar[Optional[float]] = None
    final_lr: InitVar[Optional[float]] = None
    warmup_steps: InitVar[Optional[int]] = None
    checkpoint_every: InitVar[Optional[int]] = None
    progress: InitVar[Optional[bool]] = None
    report_to: InitVar[Optional[Union[list[str], str]]] = None

    def __post_init__(self, *moved) -> None:
        given = {k: v for k, v in zip(MOVED_TRAIN_KEYS, moved) if v is not None}
        if given:
            self.train = nest_moved_keys(type(self), {**given, "train": self.train}, self.COMMAND)["train"]

    # --- checks (once, where the config enters) ---------------------------------------------------------
    def validate(self) -> None:
        """The options shared by every method, and the train block (TrainConfig.validate on the proxy's config)."""
        for name in ("steps", "log_every"):
            value = getattr(self, name)
            require(value > 0, f"{self.COMMAND}: '{name}' must be a positive integer, got {value}")
        self.check_options()  # before the train block: its defaults may follow the method's options
        probe = self.proxy_train_config(Path(self.work_dir or "proxy"), data=self.data or "corpus")
        try:  # data and out may still be unknown here (a pipeline section): TrainConfig checks the values only
            probe.validate()
        except MixweightError as exc:
            message = str(exc).removeprefix("train: ")
            raise MixweightError(f"{self.COMMAND}: the proxy's train block: {message}") from exc

    def check_options(self) -> None:
        """The method's own options (a subclass's checks)."""

    def input_paths(self) -> list[tuple[str, Optional[str]]]:
        """(flag, local path) of what the method reads: its outputs may be none of them, nor hold or lie in one."""
        paths = [
            ("--data", None if self.data is None or is_url(self.data) or self.data == SYNTHETIC_ALIAS else self.data)
        ]
        if self.proxy.endswith(".json"):
            paths.append(("--proxy", self.proxy))
        return paths

    def require_paths(self) -> None:
        require(self.data is not None, f"{self.COMMAND}: --data is required (a corpus directory)")
        require(self.out is not None, f"{self.COMMAND}: --out is required (the weights JSON file to write)")

    # --- what the proxy runs are -----------------------------------------------------------------------
    def train_defaults(self) -> dict:
        """The train block's defaults where the method's differ from TrainConfig's."""
        return dict(self.TRAIN_DEFAULTS)

    def proxy_train_config(
        self, run_dir: Path, steps: Optional[int] = None, domain_weights: str = "uniform", data: Optional[str] = None
    ) -> TrainConfig:
        """One proxy run's TrainConfig: TrainConfig's defaults < the method's < the train block < the keys the
        method sets (corpus, run directory, model, steps, seed, log_every, sampling). `self` is valid."""
        values = {
            **self.train_defaults(),
            **self.train,
            "data": data if data is not None else self.data,
            "out": str(run_dir),
            "model": self.proxy,
            "steps": steps if steps is not None else self.steps,
            "seed": self.seed,
            "log_every": self.log_every,
            "domain_weights": domain_weights,
        }
        return TrainConfig(**values)

    def resolved_work_dir(self) -> Path:
        out = Path(self.out)
        return Path(self.work_dir) if self.work_dir else out.with_name(f"{out.stem}.work")

    def options(self) -> dict:
        """The method's own options (every field but the train block), as the work directory records them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "train"}


def effective_train_block(config: ProxyMethodConfig) -> dict:
    """The train block with the method's defaults filled in: what the config hash covers."""
    return {**config.train_defaults(), **config.train}


def config_hash(config: ProxyMethodConfig, corpus_config_hash: str) -> str:
    """sha256 hex of the method's weight-determining options, its train block (with the method's defaults)
    and the corpus's own config hash; keys in UNHASHED are left out. `config` is valid and resolved."""
    values = {k: v for k, v in config.options().items() if k not in UNHASHED}
    values["train"] = {k: v for k, v in effective_train_block(config).items() if k not in UNHASHED}
    values["corpus_config_hash"] = corpus_config_hash
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


# --- held-out target domains (DoGE's --target, regmix's --target) ----------------------------------------
def check_target_domains(command: str, targets: list[str], domains: list[str], also: str = "") -> None:
    """Unknown names -> MixweightError naming them, the closest domain and the corpus's domains (`also`: the
    other values the option takes, e.g. "all"); naming every domain is refused too (nothing left to train on)."""
    for name in targets:
        if name not in domains:
            hint = did_you_mean(name, domains, cutoff=0.4)
            raise MixweightError(
                f"{command}: --target '{name}' is not a domain of the corpus; {hint}"
                f"the corpus's domains are {', '.join(domains)}" + (f" (or {also})" if also else "")
            )
    if len(set(targets)) == len(domains):
        raise MixweightError(
            f"{command}: --target names every domain ({', '.join(domains)}); leave at least one to train on"
        )


# --- the work directory -----------------------------------------------------------------------------------
def record_path(config: ProxyMethodConfig) -> Path:
    return config.resolved_work_dir() / f"{config.NAME}_config.yaml"


def claim_work_dir(
    config: ProxyMethodConfig, legacy_check=None, keys: Optional[tuple[str, ...]] = None, extra: Optional[dict] = None
) -> Path:
    """Check the work directory holds runs of this method config, then record it there; returns the directory.

    Each proxy run's TrainConfig is compared by the trainer (`train_or_reuse`); this compares what no
    TrainConfig holds, the method's own options (eta, mu, target, ...), against `<NAME>_config.yaml`
    written by the last run here: another value stops with one line naming the changed keys. A key the
    record lacks had its default. `keys` limits the comparison to the options that define the runs (regmix:
    the fit's options reuse the swarm); `extra` adds values recorded and compared beside them (regmix: the
    train block, the proxy spec, the corpus's config hash). `legacy_check(work_dir)` decides for a work
    directory without a record (made by an older mixweight); it may raise. `config` is valid and resolved.
    """
    work_dir = config.resolved_work_dir()
    path = record_path(config)
    extra = dict(extra or {})
    if path.is_file():
        saved = load_yaml_file(path, "the work directory's record") or {}
        if not isinstance(saved, dict):
            saved = {}
        saved = rename_keys(type(config), saved, str(path), quiet=True)  # a record of an older mixweight
        defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
        current = {k: v for k, v in config.options().items() if k not in UNHASHED and (keys is None or k in keys)}
        current.update(extra)
        changed = sorted(k for k in current if saved.get(k, defaults.get(k)) != current[k])
        if changed:

            def shown(key: str) -> str:
                old, new = saved.get(key, defaults.get(key)), current[key]
                if isinstance(old, dict) and isinstance(new, dict):
                    keys_ = sorted(set(old) | set(new), key=str)
                    inner = [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys_ if old.get(k) != new.get(k)]
                    if len(inner) <= 3 and all(len(line) < 120 for line in inner):
                        return ", ".join(inner)
                    return f"{key}'s contents"
                return f"{key}: {old!r} -> {new!r}"

            details = ", ".join(shown(k) for k in changed)
            raise MixweightError(
                f"{work_dir}: holds {config.NAME} proxy runs made with a different config ({details}); "
                "delete it or choose another --work-dir"
            )
    elif legacy_check is not None:
        legacy_check(work_dir)
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({**dataclasses.asdict(config), **extra}, sort_keys=False))
    return work_dir


# --- start and finish: the same for every method ----------------------------------------------------------
def start(config: ProxyMethodConfig) -> Corpus:
    """Check the config, --out and the work directory (before any training), then open the corpus."""
    config.validate()
    config.require_paths()
    check_outputs(config)  # before any training, not after the proxy finished
    return open_corpus(config.data, is_main_process())


def provenance(config: ProxyMethodConfig, manifest: Manifest, corpus: str) -> dict:
    """The artifact's provenance, one schema for every method (docs/weights-methods.md). `config` resolved."""
    return {
        "seed": config.seed,
        "config_hash": config_hash(config, manifest.config_hash),
        "proxy": {"name": config.proxy, "spec": load_spec(config.proxy)},
        "tokenizer_fingerprint": manifest.tokenizer.get("fingerprint"),
        "domain_token_counts": manifest.train_tokens(),
        "corpus": str(Path(corpus).resolve()),
        "corpus_config_hash": manifest.config_hash,
        "stream_paths": {d: manifest.splits["train"][d].path for d in manifest.domains},
        "mixweight_version": mixweight.__version__,
    }


def runs_compute(runs: dict[str, str | Path]) -> dict:
    """The artifact's `compute`: the training FLOPs of each run that made the weights ({name: run directory}),
    from its eval.json's compute record, and their sum. A run without one (an older mixweight's) is null, and so
    is the sum: a partial total would read as the whole cost."""
    flops = {}
    for name, run_dir in runs.items():
        try:
            record = json.loads((Path(run_dir) / "eval.json").read_text()).get(COMPUTE_KEY)
        except (OSError, ValueError, AttributeError):
            record = None
        flops[name] = record.get("flops") if isinstance(record, dict) else None
    known = all(isinstance(v, (int, float)) for v in flops.values())
    return {"flops": float(sum(flops.values())) if known else None, "runs": flops}


def write_artifact(result: DomainWeights, out: str | Path, manifest: Manifest, plots=None) -> None:
    """Main process only: the health warnings on stderr, the weights file, its plots beside it: by default the
    trajectory and the weights vs natural bars; `plots(result, out)` draws a method's own instead."""
    if not is_main_process():
        return
    from mixweight.domain.plots import plot_trajectory, plot_weights_vs_natural

    name = result.method.get("name", "weights")
    for warning in result.warnings:
        print(f"mixweight {name}: warning: {format_warning(warning)}", file=sys.stderr, flush=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.write(out)
    if plots is not None:
        plots(result, out)
        return
    plot_trajectory(result, out.with_name(f"{out.stem}_trajectory.png"))
    plot_weights_vs_natural(result, manifest.natural_weights(), out.with_name(f"{out.stem}_bars.png"))
