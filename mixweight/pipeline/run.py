"""`mixweight pipeline CONFIG --out DIR`: corpus -> domain weights -> main arms -> report.

    OUT/corpus/                      the data stage (synthetic, prepared, or a link to a path)
    OUT/weights/doremi/, doge/       domain_weights.json (+ plots, + the proxy runs in work/)
    OUT/runs/<arm>-seed<S>/          one training run per arm and seed
    OUT/downstream/<arm>-seed<S>/    lm-eval-harness accuracy of the run's final checkpoint (optional)
    OUT/report/                      report.md, report.json, figures

Every stage is cached by the hash of its inputs (see stages.py): rerunning skips what is
done, a changed stage reruns with everything downstream, an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from mixweight.domain.doge_run import DoGEConfig, run_doge
from mixweight.domain.doremi_run import DoReMiConfig, run_doremi
from mixweight.pipeline.config import METHODS, PipelineConfig, arm_values, stage_config
from mixweight.pipeline.stages import Stage, stage_key
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

WEIGHTS_FILE = "domain_weights.json"


def _data_stage(config: PipelineConfig, out: Path) -> tuple[Stage, str]:
    """The corpus stage and the corpus directory the other stages read."""
    (kind, options), = config.data.items()
    corpus = out / "corpus"
    options = dict(options or {})

    def make() -> None:
        if kind == "synthetic":
            from mixweight.data.synthetic import write_synthetic_corpus

            write_synthetic_corpus(corpus / "data", overwrite=True, **options)
        elif kind == "prepare":
            from mixweight.data.prepare import prepare_corpus

            prepare_corpus(out_dir=corpus / "data", overwrite=True, **options)

    directory = Path(options["dir"]) if kind == "path" else corpus
    return Stage("data", corpus, stage_key("data", kind, options), 0, make), (
        str(directory) if kind == "path" else str(corpus / "data"))


def _method_stage(method: str, section: dict, corpus: str, data_key: str, out: Path, progress: bool) -> Stage:
    directory = out / "weights" / method
    cls, runner = (DoReMiConfig, run_doremi) if method == "doremi" else (DoGEConfig, run_doge)
    stage_cfg = stage_config(cls, {"progress": progress, **section}, f"pipeline '{method}'", data=corpus,
                             out=str(directory / WEIGHTS_FILE), work_dir=str(directory / "work"))
    steps = stage_cfg.steps * (2 * getattr(stage_cfg, "rounds", 1) if method == "doremi" else 3)
    key_section = {k: v for k, v in section.items() if k != "progress"}
    return Stage(f"weights {method}", directory, stage_key(method, key_section, data_key), steps,
                 lambda: runner(stage_cfg))


def _arm_stage(config: PipelineConfig, name: str, seed: int, corpus: str, upstream: dict[str, str], out: Path) -> Stage:
    values = {"seed": seed, "progress": config.progress, **arm_values(config, name)}
    method = values.get("domain_weights")
    inputs = [upstream["data"]]
    if method in METHODS:
        values["domain_weights"] = str(out / "weights" / method / WEIGHTS_FILE)
        inputs.append(upstream[method])
    directory = out / "runs" / f"{name}-seed{seed}"
    train_cfg = stage_config(TrainConfig, values, f"pipeline arm '{name}'", data=corpus, out=str(directory))

    def run() -> None:
        resume = (directory / "checkpoints").is_dir()  # an interrupted attempt of this same stage
        train(dataclasses.replace(train_cfg, resume=resume))

    key_values = {k: v for k, v in values.items() if k != "progress"}  # display only: must not rerun a stage
    return Stage(f"arm {name} (seed {seed})", directory, stage_key("arm", key_values, inputs), train_cfg.steps, run)


def _downstream_stage(options: dict, arm: Stage) -> Stage:
    """lm-eval-harness on an arm's final checkpoint; the result lands in the run directory for the report."""
    run_dir = arm.directory
    directory = run_dir.parent.parent / "downstream" / run_dir.name

    def run() -> None:
        from mixweight.eval.downstream import run_lm_eval
        from mixweight.jsonio import write_json_atomic
        from mixweight.report.stats import DOWNSTREAM_FILE

        result = run_lm_eval(run_dir, list(options["tasks"]), int(options.get("num_fewshot", 5)),
                             include_path=options.get("include_path"), limit=options.get("limit"),
                             batch_size=int(options.get("batch_size", 16)))
        write_json_atomic(run_dir / DOWNSTREAM_FILE, result)
        write_json_atomic(directory / DOWNSTREAM_FILE, result)

    return Stage(f"lm-eval {run_dir.name}", directory, stage_key("lm_eval", options, arm.key), 0, run)


def build_stages(config: PipelineConfig, out: Path) -> tuple[list[Stage], dict[str, list[str]]]:
    data, corpus = _data_stage(config, out)
    stages, keys = [data], {"data": data.key}
    for method in METHODS:
        section = getattr(config, method)
        uses = any(arm_values(config, arm).get("domain_weights") == method for arm in config.arms)
        if section is not None and uses:
            stage = _method_stage(method, section, corpus, data.key, out, config.progress)
            stages.append(stage)
            keys[method] = stage.key
    arms: dict[str, list[str]] = {}
    for name in config.arms:
        for seed in config.seeds:
            stage = _arm_stage(config, name, seed, corpus, keys, out)
            stages.append(stage)
            arms.setdefault(name, []).append(str(stage.directory))
            if config.eval.get("lm_eval"):
                stages.append(_downstream_stage(config.eval["lm_eval"], stage))
    return stages, arms


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def run_pipeline(config: PipelineConfig, out: str | Path) -> dict:
    """Run every stage that is not already done, then write the report; returns report.json's content."""
    from mixweight.report import compare_runs

    out = Path(out)
    stages, arms = build_stages(config, out)
    total_steps = sum(s.steps for s in stages if not s.done)
    done_steps, seconds_per_step, started = 0, None, time.perf_counter()
    for index, stage in enumerate(stages, 1):
        prefix = f"[{index}/{len(stages)}] {stage.name}"
        if stage.done:
            print(f"{prefix}: cached ({stage.directory})", flush=True)
            continue
        eta = f", pipeline ETA {_eta((total_steps - done_steps) * seconds_per_step)}" if seconds_per_step else ""
        print(f"{prefix}: running into {stage.directory} ({stage.steps} steps{eta})", flush=True)
        began = time.perf_counter()
        stage.run()
        done_steps += stage.steps
        if done_steps:
            seconds_per_step = (time.perf_counter() - started) / done_steps
        print(f"{prefix}: done in {_eta(time.perf_counter() - began)}", flush=True)
    weights = {m: str(out / "weights" / m / WEIGHTS_FILE) for m in METHODS if (out / "weights" / m / WEIGHTS_FILE).is_file()}
    report = compare_runs(arms, out / "report", weights_files=weights or None, baseline=config.report.get("baseline"))
    print(f"[report] {out / 'report' / 'report.md'} (pipeline took {_eta(time.perf_counter() - started)})", flush=True)
    return report
