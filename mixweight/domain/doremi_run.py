"""`mixweight weights doremi`: reference run -> DoReMi proxy run -> domain_weights.json.

    for each round r:
        reference: train(domain_weights = reference_weights | round r-1's weights)   (or reuse --reference)
        proxy:     train(domain_weights = uniform, step objective = DoReMi over the reference)
        weights_r: the proxy's average alpha
    -> <out> (the last round's weights, trajectory, provenance) + <stem>_trajectory.png, <stem>_bars.png

Every run lives in `work_dir` (default `<out stem>.work/` next to `out`) and goes through the
proxy runner (`mixweight.domain.proxy`): a finished run is reused, an interrupted one is resumed
from its newest checkpoint, so re-running the same command continues where it stopped. What is
DoReMi's own: the reference runs and the rounds, the `DoReMiWeighting` objective, and the final
weights rule (the average of alpha over the last proxy's steps). The weights file holds no
timestamps and no paths of the run directories: the same seed and config give the same bytes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from mixweight.core.artifact import DomainWeights, resolve_proportions
from mixweight.core.config import option as _f
from mixweight.core.config import require
from mixweight.core.distributed import is_main_process
from mixweight.core.model import load_model
from mixweight.domain.doremi import PROXY_LOSSES, DoReMiWeighting, replay
from mixweight.domain.health import weight_warnings
from mixweight.domain.proxy import (
    ProxyMethodConfig,
    claim_work_dir,
    provenance,
    runs_compute,
    start,
    train_or_reuse,
    write_artifact,
)
from mixweight.errors import MixweightError
from mixweight.train import checkpoint as ckpt
from mixweight.train.config import TrainConfig
from mixweight.train.objective import WeightedLoss
from mixweight.train.reference import check_reference_run


@dataclass
class DoReMiConfig(ProxyMethodConfig):
    """`weights doremi`: the method's options; the reference and proxy runs' TrainConfig is the train block."""

    COMMAND: ClassVar[str] = "weights doremi"
    NAME: ClassVar[str] = "doremi"
    TRAIN_DEFAULTS: ClassVar[dict] = {"batch_size": 32, "eval_every": 0}  # the global batch should cover every domain
    # "objective" named the proxy's loss and, elsewhere, the step objective and the weighted loss: now one name each
    RENAMED_KEYS: ClassVar[dict] = {"objective": "proxy_loss"}

    proxy: str = _f(
        "gpt2-tiny", "model spec of the reference and proxy models (a name in proxies/ or an HF config JSON)"
    )
    steps: int = _f(200, "optimizer steps of each proxy run")
    seed: int = _f(0, "seed for model init and data order (reference and proxy)")
    work_dir: Optional[str] = _f(
        None, "directory of the reference and proxy runs (default: <out stem>.work/ next to out)"
    )
    reference: Optional[str] = _f(
        None, "a finished reference run directory to reuse in round 1 (trained on this corpus)"
    )
    reference_weights: str = _f(
        "natural", "domain weights the reference is trained on: natural, uniform or a weights JSON file"
    )
    reference_steps: Optional[int] = _f(None, "optimizer steps of each reference run (default: steps)")
    eta: float = _f(1.0, "step size of the exponentiated-gradient update of the domain weights (0.1 if they collapse)")
    smoothing: float = _f(1e-3, "smoothing c: mix c/k of uniform into the domain weights at every update")
    rounds: int = _f(1, "iterated DoReMi: round r+1 trains a new reference on round r's weights")
    proxy_loss: str = _f(
        "paper",
        "the loss the proxy minimises: paper (sum_i alpha_i * mean loss of domain i) or token (the reference code's "
        "token-weighted mean)",
    )

    def input_paths(self) -> list[tuple[str, Optional[str]]]:
        weights_file = None if self.reference_weights in ("natural", "uniform") else self.reference_weights
        return [*super().input_paths(), ("--reference-weights", weights_file), ("--reference", self.reference)]

    def check_options(self) -> None:
        require(self.rounds > 0, f"weights doremi: 'rounds' must be a positive integer, got {self.rounds}")
        require(
            self.reference_steps is None or self.reference_steps > 0,
            f"weights doremi: 'reference_steps' must be a positive integer, got {self.reference_steps}",
        )
        require(self.eta > 0, f"weights doremi: 'eta' must be > 0, got {self.eta}")
        require(0 <= self.smoothing < 1, f"weights doremi: 'smoothing' must be in [0, 1), got {self.smoothing}")
        require(
            self.proxy_loss in PROXY_LOSSES,
            f"weights doremi: 'proxy_loss' must be one of {', '.join(PROXY_LOSSES)}, got {self.proxy_loss!r}",
        )
        require(
            self.reference_weights in ("natural", "uniform") or Path(self.reference_weights).is_file(),
            f"weights doremi: 'reference_weights' must be natural, uniform or a weights JSON file; "
            f"{self.reference_weights!r} is none of these",
        )
        require(
            self.reference is None or Path(self.reference).is_dir(),
            f"weights doremi: 'reference' {self.reference!r} is not a run directory",
        )


def _train_config(config: DoReMiConfig, corpus: str, out: Path, steps: int, domain_weights: str) -> TrainConfig:
    """A reference or proxy run's TrainConfig (`config` valid)."""
    return config.proxy_train_config(out, steps, domain_weights, data=corpus)


def _load_reference(run_dir: Path):
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise MixweightError(f"reference run {run_dir}: no checkpoint to load")
    return load_model(latest / "model")  # checks config.json first: no custom code, safetensors only


def _l1(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b))


def _add_replay_and_warnings(result: DomainWeights, weighting: DoReMiWeighting, floor: float) -> None:
    """The last proxy's replay block, and the health warnings of its per-step trajectory."""
    try:
        result.replay = weighting.replay_block()
    except MixweightError as exc:  # a proxy resumed from an older checkpoint: weights stand, no replay
        warnings.warn(f"{exc}; the artifact is written without 'replay'", stacklevel=2)
        rows = [weighting.initial_weights] + [e["weights"] for e in weighting.trajectory]
    else:
        rows = replay(result)
    result.warnings = weight_warnings(rows, result.domains, floor)


def run_doremi(config: DoReMiConfig) -> DomainWeights:
    """Compute DoReMi domain weights (docs/algorithms.md section 2) and write them to `config.out`."""
    opened = start(config)
    corpus, manifest = opened.directory, opened.manifest
    resolve_proportions(manifest, config.reference_weights)  # a bad weights file fails before any training
    given_reference = None
    if config.reference is not None:  # checked, and its model loaded, before anything is written
        check_reference_run(config.reference, opened, f"{config.COMMAND}: reference run")
        given_reference = _load_reference(Path(config.reference))
    work = claim_work_dir(config)
    reference_steps = config.reference_steps or config.steps

    history: list[dict] = []
    weights_spec = config.reference_weights
    weighting = None
    runs = {}  # every run that made the weights, for the artifact's compute
    for r in range(config.rounds):
        round_dir = work / f"round-{r}"
        if r == 0 and given_reference is not None:
            reference_model = given_reference
            runs["reference"] = config.reference
        else:
            reference_run = train_or_reuse(
                _train_config(config, corpus, round_dir / "reference", reference_steps, weights_spec)
            )
            reference_model = _load_reference(reference_run)
            runs[f"round-{r}/reference"] = reference_run
        weighting = DoReMiWeighting(
            reference_model,
            manifest.domains,
            config.eta,
            config.smoothing,
            config.proxy_loss,
            config.log_every,
            total_steps=config.steps,
        )
        proxy = _train_config(config, corpus, round_dir / "proxy", config.steps, "uniform")
        # the weighting ends with the finished run's saved state: the same whether trained now, resumed or reused
        objective = WeightedLoss(weighting, proxy.loss_impl, proxy.sample_weighting.scope)
        runs[f"round-{r}/proxy"] = train_or_reuse(proxy, objective)
        weights = weighting.average_weights()
        l1 = _l1(weights, history[-1]["weights"]) if history else None
        history.append({"round": r + 1, "weights": weights, "l1_to_previous": l1})
        if is_main_process():
            summary = ", ".join(f"{d} {w:.3f}" for d, w in zip(manifest.domains, weights))
            change = f"; L1 to round {r}: {l1:.4f}" if l1 is not None else ""
            print(f"mixweight doremi: round {r + 1}/{config.rounds}: {summary}{change}", flush=True)
        if r + 1 < config.rounds:
            weights_file = round_dir / "weights.json"
            if is_main_process():
                DomainWeights(domains=list(manifest.domains), weights=weights).write(weights_file)
            weights_spec = str(weights_file)

    result = DomainWeights(
        domains=list(manifest.domains),
        weights=history[-1]["weights"],
        last_weights=weighting.alpha.tolist(),
        method={
            "name": "doremi",
            "eta": config.eta,
            "smoothing": config.smoothing,
            "proxy_loss": config.proxy_loss,
            "rounds": config.rounds,
            "steps": config.steps,
            "reference_steps": reference_steps,
            "reference_weights": config.reference_weights,
            "average": "mean of alpha_1..alpha_T (alpha_0 not counted)",
            "rounds_history": [
                {
                    "round": h["round"],
                    "weights": dict(zip(manifest.domains, h["weights"])),
                    "l1_to_previous": h["l1_to_previous"],
                }
                for h in history
            ],
        },
        trajectory=[{"step": e["step"], "weights": e["weights"], "signal": e["signal"]} for e in weighting.trajectory],
        provenance=provenance(config, manifest, corpus),
        compute=runs_compute(runs),
    )
    _add_replay_and_warnings(result, weighting, config.smoothing / len(manifest.domains))
    write_artifact(result, config.out, manifest)
    return result
