"""`mixweight pipeline CONFIG --out DIR`: corpus -> domain weights -> main arms -> report.

    OUT/corpus/                      the data stage (synthetic, prepared, or a link to a path)
    OUT/weights/doremi/, doge/       domain_weights.json (+ plots, + the proxy runs in work/)
    OUT/runs/<arm>-seed<S>/          one training run per arm and seed
    OUT/downstream/<arm>-seed<S>/    lm-eval-harness accuracy of the run's final checkpoint (optional)
    OUT/report/                      report.md, report.json, figures

Every stage is cached by the hash of its inputs (see stages.py): rerunning skips what is
done, an interrupted stage resumes, and an arm whose only changes are ones the trainer can
resume (more steps, other eval/checkpoint/log intervals) continues from its last checkpoint.
Any other change stops the pipeline before it runs anything, naming the stages and keys;
`--rerun-changed` then moves each changed stage's directory aside (nothing is deleted) and
reruns it with everything downstream.

OUT/pipeline.yaml records the config that made the directory (an earlier one is kept as
pipeline.replaced-<time>.yaml), and OUT/.pipeline.lock keeps two pipelines out of one --out.

This module checks and runs: the corpus pre-checks, the refusal or the moves, the run loop with its ETA, the
report. The stages come from build.py, OUT's lock, record and --out check from outdir.py.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from mixweight.core.artifact import resolve_proportions
from mixweight.core.config import option
from mixweight.core.distributed import barrier, broadcast_object, close_world, init_world
from mixweight.core.locks import DirectoryLock
from mixweight.core.model import build_config as build_model_config
from mixweight.data.corpus import open_corpus
from mixweight.domain.methods import get_method
from mixweight.errors import MixweightError
from mixweight.pipeline.build import WEIGHTS_FILE, build_stages
from mixweight.pipeline.config import PipelineConfig, arm_values, data_form, used_methods
from mixweight.pipeline.outdir import check_pipeline_out, pipeline_lock, record_config
from mixweight.pipeline.stages import CHANGED, DONE, EXTEND, Stage
from mixweight.sampling.spec import MixtureSpec
from mixweight.train.config import TrainConfig


@dataclass
class PipelineCommand:
    """`mixweight pipeline CONFIG --out DIR` (the YAML itself is a PipelineConfig)."""

    COMMAND: ClassVar[str] = "pipeline"

    config: Optional[str] = option(
        None, "pipeline YAML: data, train, one section per weights method, arms, seeds, report, eval", positional=True
    )
    out: Optional[str] = option(
        None, "output directory: corpus, weights, one run per arm and seed, report (required)", required=True
    )
    progress: Optional[bool] = option(
        None,
        "show progress bars (only on a terminal); overrides the YAML's progress (default: the YAML's, else on)",
    )
    rerun_changed: bool = option(
        False,
        "when the config changed for stages already run in --out, move their directories aside (<stage "
        "dir>.replaced-<time>-<keys>; nothing is deleted) and run them again; without it the pipeline stops and "
        "names the changed keys (default: off)",
    )


def check_against_corpus(config: PipelineConfig, corpus: str) -> None:
    """Checks that need the corpus's domains, run before the first proxy trains (not when an arm meets them)."""
    from mixweight.sampling.schedule import resolve_schedule

    manifest = open_corpus(corpus).manifest
    for method, section in used_methods(config).items():
        try:  # e.g. held-out targets that name domains, a swarm large enough for the training domains
            runner = get_method(method)
            runner.check_corpus(section, manifest)
            if runner.cost(section) > 0:  # it trains proxies: their model fits the corpus (vocabulary, positions)
                build_model_config(section.proxy, manifest)
        except MixweightError as exc:
            raise MixweightError(f"pipeline '{method}': {exc}") from exc
    for name in config.arms:
        values = arm_values(config, name)
        try:  # every arm's model, before any proxy trains (not when that arm's turn comes)
            build_model_config(config.arm_config(name).model, manifest)
        except MixweightError as exc:
            raise MixweightError(f"pipeline arm '{name}': {exc}") from exc
        spec = values.get("domain_weights", TrainConfig.domain_weights)
        if MixtureSpec.parse(spec).online:  # online mixing: its prior mixture
            try:
                resolve_proportions(manifest, config.arm_config(name).mixing.prior)
            except MixweightError as exc:
                raise MixweightError(f"pipeline arm '{name}': mixing.prior: {exc}") from exc
        elif spec not in config.methods:  # a named mixture or a file: check it against the corpus now
            try:
                resolve_schedule(manifest, str(spec), int(values.get("domain_weights_every", 0) or 0))
            except MixweightError as exc:
                raise MixweightError(f"pipeline arm '{name}': {exc}") from exc


def _refusal(out: Path, changed: list) -> MixweightError:
    described = "; ".join(f"{stage.name} ({', '.join(plan.changes)})" for stage, plan in changed)
    return MixweightError(
        f"pipeline {out}: the config changed for stage(s) already run here, and continuing would replace their "
        f"results: {described}. Rerun with --rerun-changed to move their directories aside (nothing is deleted) "
        "and run them again, restore the old values, or choose another --out"
    )


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _prepare_out(
    config: PipelineConfig, out: Path, stages: list[Stage], corpus: str, rerun_changed: bool, lock: DirectoryLock
) -> list:
    """Rank 0 (or the one process), holding the lock: every check that can run now, then OUT's writes."""
    plans = [stage.plan() for stage in stages]
    changed = [(stage, plan) for stage, plan in zip(stages, plans) if plan.state == CHANGED]
    if changed and not rerun_changed:
        raise _refusal(out, changed)
    if plans[0].state == DONE or data_form(config.data)[0] == "path":  # the corpus exists: check it before writing
        check_against_corpus(config, corpus)
    lock.keep()  # OUT is the pipeline's from here on
    record_config(config, out)
    for stage, plan in changed:
        kept = stage.move_aside(plan)
        print(
            f"[pipeline] {stage.name} changed ({', '.join(plan.changes)}): the old directory is kept as {kept}",
            flush=True,
        )
    return plans


def run_pipeline(config: PipelineConfig, out: str | Path, rerun_changed: bool = False) -> dict:
    """Run every stage that is not already done, then write the report; returns report.json's content.

    Under torchrun rank 0 alone takes the lock, decides (refusal, moves, pipeline.yaml) and tells the
    other ranks, which train with it; a refusal stops every rank with the same error.
    """
    check_pipeline_out(config, out)  # as given: Path() would read the URL s3://b/x as the directory s3:/b/x
    out = Path(out)
    stages, arms, corpus = build_stages(config, out)  # checks the inputs outside OUT before anything is written
    world = init_world()  # the command's process group, or one of our own when called as a library
    try:
        return _run_stages(config, out, stages, arms, corpus, rerun_changed, world)
    finally:
        close_world(world)  # only a group init_world opened here


def _run_stages(config, out: Path, stages: list[Stage], arms: dict, corpus: str, rerun_changed: bool, world) -> dict:
    from mixweight.report import compare_runs

    with ExitStack() as held:
        outcome = None
        if world.is_main:
            try:
                lock = held.enter_context(pipeline_lock(out))
                outcome = ("plans", _prepare_out(config, out, stages, corpus, rerun_changed, lock))
            except MixweightError as exc:
                outcome = ("error", str(exc))
        outcome = broadcast_object(outcome, world)
        if outcome[0] == "error":
            raise MixweightError(outcome[1])
        plans = outcome[1]  # rank 0's: the other ranks must not read markers rank 0 may be moving
        barrier(world)  # no rank runs a stage before rank 0 has moved the changed ones aside
        corpus_checked = plans[0].state == DONE or data_form(config.data)[0] == "path"
        total_steps = sum(s.steps for s, p in zip(stages, plans) if p.state != DONE)
        done_steps, seconds_per_step, started = 0, None, time.perf_counter()
        for index, (stage, plan) in enumerate(zip(stages, plans), 1):
            if index > 1 and not corpus_checked:  # the data stage is first: its corpus now exists
                check_against_corpus(config, corpus)
                corpus_checked = True
            prefix = f"[{index}/{len(stages)}] {stage.name}"
            if plan.state == DONE:
                print(f"{prefix}: cached ({stage.directory})", flush=True)
                continue
            eta = f", pipeline ETA {_eta((total_steps - done_steps) * seconds_per_step)}" if seconds_per_step else ""
            how = f"continuing in place ({', '.join(plan.changes)})" if plan.state == EXTEND else "running"
            print(f"{prefix}: {how} into {stage.directory} ({stage.steps} steps{eta})", flush=True)
            began = time.perf_counter()
            stage.run()
            done_steps += stage.steps
            if done_steps:
                seconds_per_step = (time.perf_counter() - started) / done_steps
            print(f"{prefix}: done in {_eta(time.perf_counter() - began)}", flush=True)
        report = None
        if world.is_main:  # one writer of OUT/report
            weights = {
                m: str(out / "weights" / m / WEIGHTS_FILE)
                for m in config.methods
                if (out / "weights" / m / WEIGHTS_FILE).is_file()
            }
            report = compare_runs(arms, out / "report", weights_files=weights or None, baseline=config.report.baseline)
            print(
                f"[report] {out / 'report' / 'report.md'} (pipeline took {_eta(time.perf_counter() - started)})",
                flush=True,
            )
        return broadcast_object(report, world)  # and the lock is held until every rank is done
