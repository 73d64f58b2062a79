"""The pipeline's stages, built from its config: the corpus, one weights stage per method used, one training
arm per arm and seed (and its lm-eval scoring), each with the key and inputs that decide when it reruns.

Building reads the inputs outside OUT (the files `data.prepare` reads, a `data.path` corpus's manifest, a
swarm table) and writes nothing under OUT; run.py decides what runs. Stage caching itself is stages.py's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mixweight.core.config import rename_keys, with_values
from mixweight.core.distributed import is_main_process
from mixweight.data.cluster_options import cluster_options_of
from mixweight.data.cluster_options import external_inputs as cluster_inputs
from mixweight.data.corpus import open_corpus
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
from mixweight.pipeline.stages import Stage, as_stored, stage_key
from mixweight.train.config import TrainConfig, canonical_values
from mixweight.train.loop import RESUMABLE_CHANGES, train

WEIGHTS_FILE = "domain_weights.json"


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
    train_cfg = with_values(config.arm_config(name), owned)

    def run() -> None:
        if _trained_to(directory) == train_cfg.steps:
            return  # finished, and only intervals changed since: there is nothing left to train
        resume = (directory / "checkpoints").is_dir()  # interrupted, or continued to more steps
        train(dataclasses.replace(train_cfg, resume=resume))

    # progress is display only: it must not rerun a stage; steps always recorded, to tell "more steps" from "fewer";
    # blocks at their typed values, so two spellings of one config are one stage
    key_values = {**canonical_values({k: v for k, v in values.items() if k not in NOT_IN_STAGE_KEY})}
    key_values["steps"] = train_cfg.steps
    return Stage(
        f"arm {name} (seed {seed})",
        directory,
        key_values,
        inputs,
        train_cfg.steps,
        run,
        resumable=_arm_can_continue,
        upgrade=_today_spelling,
    )


def _today_spelling(values: dict, inputs: dict) -> tuple[dict, dict]:
    """An arm's stage values as a marker of before (the flat keys of 0.1, a block as written) holds them, in
    today's spelling."""
    return canonical_values(rename_keys(TrainConfig, values, "stage marker", quiet=True)), inputs


def _trajectory(values: dict, inputs: dict) -> str:
    """An arm's trajectory: its key without the keys a resume may change."""
    return stage_key({k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}, inputs)


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

    trajectory = _trajectory(arm.values, arm.inputs)

    def today(values: dict, inputs: dict) -> tuple[dict, dict]:
        """A marker of before names the arm's trajectory as the arm's marker of then spelled it: the same
        trajectory when that marker, in today's spelling, is the arm's config now."""
        saved = arm.state()
        then, then_inputs = saved.get("values"), saved.get("inputs")
        if not isinstance(then, dict) or not isinstance(then_inputs, dict) or arm.upgrade is None:
            return values, inputs
        same = as_stored(arm.upgrade(then, then_inputs)[0]) == as_stored(arm.values) and then_inputs == as_stored(
            arm.inputs
        )
        if same and inputs.get("arm") == _trajectory(then, then_inputs):
            return values, {**inputs, "arm": trajectory}
        return values, inputs

    return Stage(
        f"lm-eval {run_dir.name}",
        directory,
        {**options, "arm_steps": arm.values["steps"]},
        {"arm": trajectory},
        0,
        run,
        resumable=lambda old, new, changed: changed == ["arm_steps"],
        upgrade=today,
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
