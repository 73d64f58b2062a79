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
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import yaml

from mixweight.core.artifact import resolve_proportions
from mixweight.core.config import option
from mixweight.core.distributed import barrier, broadcast_object, close_world, init_world, is_main_process
from mixweight.core.locks import DirectoryLock
from mixweight.core.model import build_config as build_model_config
from mixweight.core.outputs import check_output_path
from mixweight.core.yamlio import load_yaml
from mixweight.data.cluster_options import cluster_options_of
from mixweight.data.cluster_options import external_inputs as cluster_inputs
from mixweight.data.corpus import open_corpus
from mixweight.data.remote import is_url
from mixweight.domain.methods import get_method
from mixweight.errors import MixweightError
from mixweight.pipeline.config import (
    NOT_IN_STAGE_KEY,
    PipelineConfig,
    arm_values,
    data_form,
    online_input,
    section_key,
    used_methods,
)
from mixweight.pipeline.inputs import file_fingerprints, input_fingerprints, manifest_sha256
from mixweight.pipeline.stages import CHANGED, DONE, EXTEND, Stage, stage_key
from mixweight.sampling.spec import MixtureSpec
from mixweight.train.config import TrainConfig
from mixweight.train.loop import RESUMABLE_CHANGES, train

WEIGHTS_FILE = "domain_weights.json"
CONFIG_FILE = "pipeline.yaml"
LOCK_FILE = ".pipeline.lock"


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


def _data_stage(config: PipelineConfig, out: Path) -> tuple[Stage, str]:
    """The corpus stage and the corpus directory the other stages read."""
    kind, form, options = data_form(config.data)  # options: the keys given (one left out: the command's default)
    corpus = out / "corpus"
    values = {"kind": kind, **options}
    if kind == "prepare":
        try:
            values["input_files"] = input_fingerprints(form.input)
        except MixweightError as exc:
            raise MixweightError(f"pipeline 'data.prepare.input': {exc}") from exc
        values.update(cluster_inputs(cluster_options_of(form)))  # an encoder's or --domains-from's files, by hash
    if kind == "path":
        opened = open_corpus(form.dir)  # a missing or broken corpus fails now, before anything is written
        values["manifest_sha256"] = manifest_sha256(opened.directory)  # a URL: its fetched copy

    def make() -> None:
        if is_main_process():  # one writer: under torchrun every rank runs the stage, and reads what rank 0 wrote
            _make_corpus()
        _wait_for_main()

    def _make_corpus() -> None:
        if kind == "synthetic":
            from mixweight.data.synthetic import write_synthetic_corpus

            write_synthetic_corpus(corpus / "data", overwrite=True, **options)
        elif kind == "prepare":
            from mixweight.data.prepare import prepare_corpus

            prepare_options = {k: v for k, v in options.items() if k != "input"}
            prepare_corpus(
                input_path=form.input,
                out_dir=corpus / "data",
                overwrite=True,
                progress=config.progress,
                **prepare_options,
            )

    return Stage("data", corpus, values, {}, 0, make), form.dir if kind == "path" else str(corpus / "data")


def _wait_for_main() -> None:
    """Under torchrun: every rank waits here until rank 0 has reached it too (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _method_stage(
    method: str, section, corpus: str, data_key: str, out: Path, progress: bool, report_to="none"
) -> Stage:
    """`section`: the method's typed config, validated when the pipeline YAML was read."""
    directory = out / "weights" / method
    runner = get_method(method)
    train = {"progress": progress, "report_to": report_to, **section.train}  # the arms' display and trackers
    stage_cfg = dataclasses.replace(
        section, data=corpus, out=str(directory / WEIGHTS_FILE), work_dir=str(directory / "work"), train=train
    )
    steps = runner.cost(stage_cfg)  # work estimate for the ETA, in proxy steps
    key = section_key(section)
    files = getattr(section, "input_files", list)()  # files whose content is config (regmix's swarm table)
    if files:
        key["input_files"] = file_fingerprints(files)
    return Stage(f"weights {method}", directory, key, {"data": data_key}, steps, lambda: runner.run(stage_cfg))


def online_reference(config: PipelineConfig, method: str, out: Path) -> Path:
    """The reference run an online arm reads from the `method` stage (online DoReMi: doremi's round-0 reference)."""
    return get_method(method).reference_run(config.section(method), out / "weights" / method / "work")


def _arm_can_continue(old: dict, new: dict, changed: list[str]) -> bool:
    """The trainer resumes across these changes; fewer steps than were trained is not one (the run is past it)."""
    return set(changed) <= RESUMABLE_CHANGES and (new.get("steps") or 0) >= (old.get("steps") or 0)


def _trained_to(run_dir: Path) -> int | None:
    import json

    try:
        return int(json.loads((run_dir / "eval.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _arm_stage(config: PipelineConfig, name: str, seed: int, corpus: str, upstream: dict[str, str], out: Path) -> Stage:
    values = {"seed": seed, "progress": config.progress, **arm_values(config, name)}
    method = values.get("domain_weights")
    inputs = {"data": upstream["data"]}
    directory = out / "runs" / f"{name}-seed{seed}"
    # the arm's TrainConfig was checked when the YAML was read; here the pipeline sets what it owns
    owned = {"data": corpus, "out": str(directory), "seed": values["seed"], "progress": values["progress"]}
    if method in config.methods:
        # the key keeps the method's name (its weights stage's key is an input): the file's path changes with
        # how --out is spelled (relative, absolute, OUT moved), which must not make the arm "changed"
        owned["domain_weights"] = str(out / "weights" / method / WEIGHTS_FILE)
        inputs[method] = upstream[method]
    needs = online_input(values)
    if needs is not None:  # online DoReMi: the doremi stage's reference run, keyed by that stage (not its path)
        stage, key = needs
        owned[key] = str(online_reference(config, stage, out))
        inputs[stage] = upstream[stage]
    train_cfg = dataclasses.replace(config.arm_config(name), **owned)

    def run() -> None:
        if _trained_to(directory) == train_cfg.steps:
            return  # finished, and only intervals changed since: there is nothing left to train
        resume = (directory / "checkpoints").is_dir()  # interrupted, or continued to more steps
        train(dataclasses.replace(train_cfg, resume=resume))

    # progress is display only: it must not rerun a stage; steps always recorded, to tell "more steps" from "fewer"
    key_values = {**{k: v for k, v in values.items() if k not in NOT_IN_STAGE_KEY}, "steps": train_cfg.steps}
    return Stage(
        f"arm {name} (seed {seed})", directory, key_values, inputs, train_cfg.steps, run, resumable=_arm_can_continue
    )


def _downstream_stage(options: dict, arm: Stage) -> Stage:
    """lm-eval-harness on an arm's final checkpoint; the result lands in the run directory for the report.

    Its input is the arm's trajectory (the arm's key without the keys a resume may change) and its
    final step: an arm continued to more steps is scored again, in place.
    """
    run_dir = arm.directory
    directory = run_dir.parent.parent / "downstream" / run_dir.name

    def run() -> None:
        from mixweight.core.jsonio import write_json_atomic
        from mixweight.eval.downstream import run_lm_eval
        from mixweight.report.stats import DOWNSTREAM_FILE

        result = run_lm_eval(
            run_dir,
            list(options["tasks"]),
            int(options["num_fewshot"]),
            include_path=options.get("include_path"),
            limit=options.get("limit"),
            batch_size=int(options["batch_size"]),
        )
        write_json_atomic(run_dir / DOWNSTREAM_FILE, result)
        write_json_atomic(directory / DOWNSTREAM_FILE, result)

    trajectory = stage_key({k: v for k, v in arm.values.items() if k not in RESUMABLE_CHANGES}, arm.inputs)
    return Stage(
        f"lm-eval {run_dir.name}",
        directory,
        {**options, "arm_steps": arm.values["steps"]},
        {"arm": trajectory},
        0,
        run,
        resumable=lambda old, new, changed: changed == ["arm_steps"],
    )


def build_stages(config: PipelineConfig, out: Path) -> tuple[list[Stage], dict[str, list[str]], str]:
    """Every stage in run order, the run directories per arm, and the corpus directory."""
    data, corpus = _data_stage(config, out)
    stages, keys = [data], {"data": data.key}
    for method, section in used_methods(config).items():
        report_to = config.train.get("report_to", "none")  # the arms' trackers, unless the section sets its own
        stage = _method_stage(method, section, corpus, data.key, out, config.progress, report_to)
        stages.append(stage)
        keys[method] = stage.key
    lm_eval = config.eval.lm_eval
    arms: dict[str, list[str]] = {}
    for name in config.arms:
        for seed in config.seeds:
            stage = _arm_stage(config, name, seed, corpus, keys, out)
            stages.append(stage)
            arms.setdefault(name, []).append(str(stage.directory))
            if lm_eval is not None:
                stages.append(_downstream_stage(dataclasses.asdict(lm_eval), stage))
    return stages, arms, corpus


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
                resolve_proportions(manifest, str(values.get("mixing_prior", TrainConfig.mixing_prior)))
            except MixweightError as exc:
                raise MixweightError(f"pipeline arm '{name}': mixing_prior: {exc}") from exc
        elif spec not in config.methods:  # a named mixture or a file: check it against the corpus now
            try:
                resolve_schedule(manifest, str(spec), int(values.get("domain_weights_every", 0) or 0))
            except MixweightError as exc:
                raise MixweightError(f"pipeline arm '{name}': {exc}") from exc


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


def _record_config(config: PipelineConfig, out: Path) -> None:
    """OUT/pipeline.yaml: the config that made this directory; a different earlier one is kept beside it."""
    path, text = out / CONFIG_FILE, _config_text(config)
    if path.is_file():
        old = path.read_text()
        if old == text:
            return
        try:
            previous = load_yaml(old)
        except yaml.YAMLError:
            previous = None
        previous = previous if isinstance(previous, dict) else {}
        current = load_yaml(text)
        sections = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
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
    _record_config(config, out)
    for stage, plan in changed:
        kept = stage.move_aside(plan)
        print(
            f"[pipeline] {stage.name} changed ({', '.join(plan.changes)}): the old directory is kept as {kept}",
            flush=True,
        )
    return plans


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
