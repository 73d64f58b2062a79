"""The `mixweight` subcommands: each reads its config from the parsed flags (and YAML), calls the library and
prints the result; the work is the library's.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from mixweight.cli.flags import command_config, overrides
from mixweight.errors import MixweightError


def report_result(text: str) -> None:
    """A command's one-line result, from the main process only (every process computes it under torchrun)."""
    from mixweight.core.distributed import is_main_process

    if is_main_process():
        print(text)


def cmd_synth(args) -> None:
    from mixweight.data.output import write_remote
    from mixweight.data.remote import is_url
    from mixweight.data.synthetic import SynthConfig, write_synthetic_corpus

    config = command_config(args, SynthConfig)
    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "out"}

    def write(out):
        return write_synthetic_corpus(out, **options)

    manifest = write_remote(config.out, write) if is_url(config.out) else write(config.out)
    blocks = {d: manifest.splits["train"][d].blocks for d in manifest.domains}
    print(f"synthetic corpus in {config.out}: {len(manifest.domains)} domains, train blocks {blocks}")


def cmd_prepare(args) -> None:
    from mixweight.data.output import write_remote
    from mixweight.data.prepare import PrepareConfig, prepare_corpus, report_lines
    from mixweight.data.remote import is_url

    config = command_config(args, PrepareConfig)
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("input", "out")}

    def write(out):
        return prepare_corpus(config.input, out, **options)

    manifest = write_remote(config.out, write, config.input) if is_url(config.out) else write(config.out)
    for line in report_lines(manifest):
        print(line)
    print(f"corpus in {config.out}: domains {manifest.domains}, vocab {manifest.vocab_size}")


def cmd_train(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.train.config import TrainConfig
    from mixweight.train.loop import train

    config = load_config(TrainConfig, args.config, overrides(args, TrainConfig))
    result = train(config)
    report_result(
        json.dumps(
            {
                "average_loss": result["average_loss"],
                "worst_domain": result["worst_domain"],
                "domains": {d: round(s["loss"], 4) for d, s in result["domains"].items()},
            }
        )
    )


def cmd_eval(args) -> None:
    from mixweight.eval.run import EvalConfig, evaluate_run

    config = command_config(args, EvalConfig)
    result = evaluate_run(config.run, data=config.data, checkpoint=config.checkpoint)
    print(json.dumps(result, indent=2))


def cmd_weights_method(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.domain.methods import get_method

    method = get_method(args.weights_command)
    config = load_config(method.config, args.config, overrides(args, method.config), method.config.COMMAND)
    result = method.run(config)
    if result is not None:  # None: nothing fitted yet (weights regmix --plan writes a plan)
        report_result(json.dumps({"method": method.name, "weights": result.as_dict()}))


def cmd_weights_export(args) -> None:
    from mixweight.core.artifact import load_domain_weights
    from mixweight.domain.export import ExportConfig, cap_to_budget, export_weights

    config = command_config(args, ExportConfig)
    weights = load_domain_weights(config.file)
    tokens = None
    if config.data is not None and (config.token_budget is not None or config.max_epochs is not None):
        from mixweight.data.corpus import open_corpus

        tokens = open_corpus(config.data).manifest.train_tokens()
    weights, note = cap_to_budget(weights, config.token_budget, config.max_epochs, tokens)
    if note:
        print(f"mixweight weights export: {note}", file=sys.stderr)
    print(export_weights(weights, config.format, f"weights file {config.file}"))


def cmd_weights_verify(args) -> None:
    from mixweight.domain.methods import verify_file
    from mixweight.domain.verify import VerifyConfig

    config = command_config(args, VerifyConfig)
    print(verify_file(config.file, config.tolerance))


def cmd_pipeline(args) -> None:
    from mixweight.pipeline import load_pipeline_config, run_pipeline
    from mixweight.pipeline.run import PipelineCommand

    command = command_config(args, PipelineCommand)
    config = load_pipeline_config(command.config)
    if command.progress is not None:
        config = dataclasses.replace(config, progress=command.progress)
    run_pipeline(config, command.out, rerun_changed=command.rerun_changed)


def cmd_compare(args) -> None:
    from mixweight.report import compare_runs
    from mixweight.report.compare import CompareConfig

    config = command_config(args, CompareConfig)
    bad = [item for item in config.weights or [] if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise MixweightError(f"compare: --weights {bad[0]!r}: expected METHOD=FILE, e.g. doremi=weights/doremi.json")
    weights = dict(item.split("=", 1) for item in config.weights) if config.weights else None
    labels = config.labels.split(",") if config.labels else None
    report = compare_runs(
        config.runs, config.out, weights_files=weights, corpus=config.data, labels=labels, baseline=config.baseline
    )
    print(f"wrote {config.out}/report.md ({len(report['arms'])} arms, baseline {report['baseline']})")


def cmd_doctor(args) -> None:
    from mixweight.doctor import DoctorConfig, run_doctor

    print(run_doctor(as_json=command_config(args, DoctorConfig).json))
