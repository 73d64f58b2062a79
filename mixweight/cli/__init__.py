"""The `mixweight` command: parses, validates, calls the library. Nothing else lives here.

This module builds the command tree (which config class and function serve each subcommand) and runs it
with one error line for every refusal; flags.py makes the flags from config dataclasses, commands.py holds
the subcommands.
"""

from __future__ import annotations

import argparse

from mixweight.cli.commands import (
    cmd_compare,
    cmd_doctor,
    cmd_eval,
    cmd_pipeline,
    cmd_prepare,
    cmd_synth,
    cmd_train,
    cmd_weights_export,
    cmd_weights_method,
    cmd_weights_verify,
)
from mixweight.cli.flags import ExactFlagParser, add_cache_dir, add_config_flags, refuse, refuse_owned_flags
from mixweight.core.config import held_deprecations
from mixweight.core.outputs import WRITE_ERRNOS, write_failure
from mixweight.errors import MixweightError, first_line


def build_parser() -> argparse.ArgumentParser:
    from mixweight.data.prepare import PrepareConfig
    from mixweight.data.synthetic import SynthConfig
    from mixweight.doctor import DoctorConfig
    from mixweight.domain.export import ExportConfig
    from mixweight.domain.verify import VerifyConfig
    from mixweight.eval.run import EvalConfig
    from mixweight.pipeline.run import PipelineCommand
    from mixweight.report.compare import CompareConfig
    from mixweight.train.config import TrainConfig

    parser = ExactFlagParser(prog="mixweight", description=__import__("mixweight").__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make a corpus").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="the built-in synthetic multi-domain corpus")
    add_config_flags(synth, SynthConfig)
    add_cache_dir(synth)
    synth.set_defaults(func=cmd_synth)

    prepare = data.add_parser(
        "prepare", help="tokenize real text (JSONL[.gz|.zst], Parquet, HF dataset dir) into per-domain streams"
    )
    add_config_flags(prepare, PrepareConfig)
    add_cache_dir(prepare)
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model; every flag may also come from --config FILE.yaml")
    train.add_argument(
        "--config", default=None, help="YAML file with any of the keys below; flags given override it (default: none)"
    )
    add_config_flags(train, TrainConfig)
    add_cache_dir(train)
    train.set_defaults(func=cmd_train)

    from mixweight.domain.methods import methods

    registered = methods()
    weights = commands.add_parser(
        "weights", help=f"domain weights: compute ({', '.join(registered)}), export or verify"
    )
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    for name, method in registered.items():
        command = weights_commands.add_parser(name, help=method.help)
        command.add_argument(
            "--config",
            default=None,
            help="YAML file with any of the keys below; flags given override it (default: none)",
        )
        add_config_flags(command, method.config)
        add_cache_dir(command)
        command.set_defaults(func=cmd_weights_method)
    commands_with_configs = [
        (weights_commands, "export", "print a weights file for other trainers", ExportConfig, cmd_weights_export),
        (
            weights_commands,
            "verify",
            "check an artifact's weights follow from what it records (doremi, doge: replay the update; regmix: "
            "refit the swarm; online:odm, online:doremi: recompute each phase); exit 0 if they do",
            VerifyConfig,
            cmd_weights_verify,
        ),
        (commands, "pipeline", "the main job: weights, arms and report from one YAML", PipelineCommand, cmd_pipeline),
        (commands, "eval", "per-domain validation loss of a run's checkpoint", EvalConfig, cmd_eval),
        (commands, "compare", "tables and plots comparing finished runs", CompareConfig, cmd_compare),
        (
            commands,
            "doctor",
            "versions, device, extras and stale shared memory: paste its output into a bug report (reads only, "
            "changes nothing)",
            DoctorConfig,
            cmd_doctor,
        ),
    ]
    for group, name, summary, cls, func in commands_with_configs:
        command = group.add_parser(name, help=summary)
        add_config_flags(command, cls)
        if name not in ("export", "verify", "doctor"):  # the commands that read corpora
            add_cache_dir(command)
        command.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    refuse_owned_flags(parser, argv)
    args = parser.parse_args(argv)
    from mixweight.core.distributed import close_world, init_world
    from mixweight.data.remote import set_cache_dir

    try:
        set_cache_dir(getattr(args, "cache_dir", None))  # where remote corpora are cached, for every command
    except MixweightError as exc:
        refuse(str(exc))

    # Under torchrun, one process group serves every stage of the command (a DoReMi run trains twice).
    world = init_world()
    try:
        with held_deprecations():  # a refused command prints its error line alone
            args.func(args)
    except MixweightError as exc:
        refuse(str(exc))
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        refuse(write_failure(exc))
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and not _out_of_memory(exc):
            raise
        refuse(
            f"out of memory ({first_line(exc) if str(exc) else 'MemoryError'}): a size in the command (batch size, "
            "seq_len, eval blocks, vocabulary) needs more memory than this machine has; lower it"
        )
    finally:
        close_world(world)


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocation failures: OutOfMemoryError (a device), or the CPU allocator's RuntimeError."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)
