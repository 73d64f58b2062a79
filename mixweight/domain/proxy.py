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
    write_artifact(...)                main process only: health warnings, the file, the plots

docs/design.md ("Adding a weights method") describes the seam.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mixweight.errors import MixweightError
from mixweight.train import checkpoint as ckpt
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
