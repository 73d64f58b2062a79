"""The `mixweight` command: parses, validates, calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from mixweight.core.config import ARGUMENT, FLAGS, HELP, MOVED, NESTED, OWNED, held_deprecations, renamed_keys
from mixweight.core.outputs import WRITE_ERRNOS, write_failure
from mixweight.errors import MixweightError, first_line

BOOL_FLAGS_NEGATABLE = {"progress", "match_repetition"}


class ExactFlagParser(argparse.ArgumentParser):
    """No abbreviated flags (argparse's default takes any unique prefix): with --train.KEY flags a prefix such as
    --train.r would silently mean --train.report-to. Subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, like every other refusal (argparse's own prints the usage first)."""
        _refuse(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One argument per config field (its name, type, default and help from the field); defaults are suppressed
    so only given flags override the YAML and the dataclass's defaults.

    A nested block (`train`, see `core.config.nested`) gets one ``--train.KEY`` flag per key of its
    config class (dest ``train.KEY``), and its deprecated top-level aliases keep their old flags.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if NESTED in field.metadata:
            _add_nested_flags(parser, cls, field)
            continue
        flags = field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),)
        argument = field.metadata.get(ARGUMENT, {})
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        _add_flag(
            parser, flags, field.name, hints[field.name], field.metadata.get(HELP, ""), default, argument=argument
        )
    for old, new in renamed_keys(cls).items():  # the spelling of before: accepted for a release, not in --help
        if new in hints:
            parser.add_argument(f"--{old.replace('_', '-')}", dest=old, type=_flag_type(hints[new]),
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip


def _flag_type(kind):
    scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    return scalar if scalar in (int, float) else str


def _add_flag(parser, flags, dest: str, kind, described: str, default, name: str | None = None, argument=None) -> None:
    argument = argument or {}
    shown = argument.get("positional") or argument.get("required") or "(default:" in described
    # A help text that explains its own default (e.g. one derived from another flag) is not repeated.
    help_text = described if shown else f"{described} (default: {default})"
    scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    is_list = typing.get_origin(scalar) is list
    item = (typing.get_args(scalar) or (str,))[0] if is_list else scalar
    convert = item if item in (int, float) else str
    if argument.get("positional"):
        nargs = "+" if is_list else None
        parser.add_argument(dest, type=convert, nargs=nargs, help=help_text, metavar=argument.get("metavar"))
        return
    extra = {"metavar": argument["metavar"]} if "metavar" in argument else {}
    if "nargs" in argument:  # a list flag of a fixed number of values (`--swarm-table MIXTURES.csv LOSSES.csv`)
        extra["nargs"] = argument["nargs"]
    if argument.get("choices"):
        extra["choices"] = list(argument["choices"])
    if argument.get("required"):
        extra["required"] = True
    if kind is bool or scalar is bool:
        negatable = (name or dest) in BOOL_FLAGS_NEGATABLE
        if negatable and "." in flags[0]:  # --train.progress / --train.no-progress
            block, key = flags[0][2:].split(".", 1)
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS, help=help_text)
            parser.add_argument(
                f"--{block}.no-{key}",
                dest=dest,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"turn {flags[0]} off (default: {default})",
            )
            return
        action = argparse.BooleanOptionalAction if negatable else "store_true"
        parser.add_argument(*flags, dest=dest, action=action, default=argparse.SUPPRESS, help=help_text)
    elif argument.get("repeated"):
        parser.add_argument(
            *flags, dest=dest, type=convert, action="append", default=argparse.SUPPRESS, help=help_text, **extra
        )
    else:
        parser.add_argument(*flags, dest=dest, type=convert, default=argparse.SUPPRESS, help=help_text, **extra)


# (command, --BLOCK.KEY) of the keys a nested block may not set -> the one-line refusal naming why.
OWNED_FLAGS: dict[tuple[str, str], str] = {}


def _refuse_owned_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """A flag of a key the block may not set is refused naming why, not as an unrecognized argument."""
    known, extras = parser.parse_known_args(argv)
    command = " ".join(filter(None, (known.command, getattr(known, "weights_command", None))))
    for token in extras:
        message = OWNED_FLAGS.get((command, token.split("=", 1)[0]))
        if message is not None:
            print(f"mixweight: error: {message}", file=sys.stderr)
            sys.exit(2)


def _add_nested_flags(parser: argparse.ArgumentParser, cls, block) -> None:
    """--BLOCK.KEY for every key of the block's config class that the outer config does not set itself."""
    inner, owned, moved = block.metadata[NESTED], block.metadata[OWNED], block.metadata[MOVED]
    hints = typing.get_type_hints(inner)
    defaults = getattr(cls, "TRAIN_DEFAULTS", {})  # the method's own defaults for the block
    notes = getattr(cls, "TRAIN_DEFAULT_NOTES", {})  # defaults that follow other options
    for field in dataclasses.fields(inner):
        if field.name in owned:  # no flag; given anyway, main() refuses it with its reason (not "unrecognized")
            command = getattr(cls, "COMMAND", parser.prog)
            for flag in field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),):
                OWNED_FLAGS[(command, f"--{block.name}.{flag[2:]}")] = (
                    f"{command}: '{block.name}.{field.name}' cannot be set here: {owned[field.name]}"
                )
            continue
        plain = field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),)
        flags = tuple(f"--{block.name}.{flag[2:]}" for flag in plain)
        default = notes.get(field.name, defaults.get(field.name, field.default))
        described = field.metadata.get(HELP, "")
        _add_flag(parser, flags, f"{block.name}.{field.name}", hints[field.name], described, default, field.name)
        if field.name in moved:  # the flat flag of before the block: accepted, deprecated
            _add_flag(
                parser,
                plain,
                field.name,
                hints[field.name],
                f"{described} (deprecated: use {flags[0]})",
                default,
            )


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    # Not a config key: where a cache lives changes no result, so it stays out of config hashes.
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="local cache for corpora given as URLs (s3://, gs://, ..., file:///DIR); put it on "
        "node-local disk (default: %(default)s, meaning $MIXWEIGHT_CORPUS_CACHE, else "
        "$MIXWEIGHT_CACHE/remote, else the platform cache directory's mixweight/remote)",
    )


def _overrides(args: argparse.Namespace, cls) -> dict:
    """The flags given, as config values: --train.KEY into {"train": {KEY: ...}}; a deprecated flat alias
    stays flat (the config loader moves it into its block, with the deprecation line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    aliases = {key for block in dataclasses.fields(cls) for key in block.metadata.get(MOVED, ())}
    aliases |= set(renamed_keys(cls))
    values: dict = {}
    for key, value in vars(args).items():
        block, dot, inner = key.partition(".")
        if dot and block in names:
            values.setdefault(block, {})[inner] = value
        elif key in names or key in aliases:
            values[key] = value
    return values


def report_result(text: str) -> None:
    """A command's one-line result, from the main process only (every process computes it under torchrun)."""
    from mixweight.core.distributed import is_main_process

    if is_main_process():
        print(text)


def _command_config(args, cls):
    """The command's config from its flags (the dataclass's defaults for the rest), checked once."""
    from mixweight.core.config import load_config

    return load_config(cls, None, _overrides(args, cls), cls.COMMAND)


def cmd_synth(args) -> None:
    from mixweight.data.output import write_remote
    from mixweight.data.remote import is_url
    from mixweight.data.synthetic import SynthConfig, write_synthetic_corpus

    config = _command_config(args, SynthConfig)
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

    config = _command_config(args, PrepareConfig)
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

    config = load_config(TrainConfig, args.config, _overrides(args, TrainConfig))
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

    config = _command_config(args, EvalConfig)
    result = evaluate_run(config.run, data=config.data, checkpoint=config.checkpoint)
    print(json.dumps(result, indent=2))


def cmd_weights_method(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.domain.methods import get_method

    method = get_method(args.weights_command)
    config = load_config(method.config, args.config, _overrides(args, method.config), method.config.COMMAND)
    result = method.run(config)
    if result is not None:  # None: nothing fitted yet (weights regmix --plan writes a plan)
        report_result(json.dumps({"method": method.name, "weights": result.as_dict()}))


def cmd_weights_export(args) -> None:
    from mixweight.core.artifact import load_domain_weights
    from mixweight.domain.export import ExportConfig, cap_to_budget, export_weights

    config = _command_config(args, ExportConfig)
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

    config = _command_config(args, VerifyConfig)
    print(verify_file(config.file, config.tolerance))


def cmd_pipeline(args) -> None:
    from mixweight.pipeline import load_pipeline_config, run_pipeline
    from mixweight.pipeline.run import PipelineCommand

    command = _command_config(args, PipelineCommand)
    config = load_pipeline_config(command.config)
    if command.progress is not None:
        config = dataclasses.replace(config, progress=command.progress)
    run_pipeline(config, command.out, rerun_changed=command.rerun_changed)


def cmd_compare(args) -> None:
    from mixweight.report import compare_runs
    from mixweight.report.compare import CompareConfig

    config = _command_config(args, CompareConfig)
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

    print(run_doctor(as_json=_command_config(args, DoctorConfig).json))


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
    _add_config_flags(synth, SynthConfig)
    _add_cache_dir(synth)
    synth.set_defaults(func=cmd_synth)

    prepare = data.add_parser(
        "prepare", help="tokenize real text (JSONL[.gz|.zst], Parquet, HF dataset dir) into per-domain streams"
    )
    _add_config_flags(prepare, PrepareConfig)
    _add_cache_dir(prepare)
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model; every flag may also come from --config FILE.yaml")
    train.add_argument(
        "--config", default=None, help="YAML file with any of the keys below; flags given override it (default: none)"
    )
    _add_config_flags(train, TrainConfig)
    _add_cache_dir(train)
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
        _add_config_flags(command, method.config)
        _add_cache_dir(command)
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
        _add_config_flags(command, cls)
        if name not in ("export", "verify", "doctor"):  # the commands that read corpora
            _add_cache_dir(command)
        command.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    _refuse_owned_flags(parser, argv)
    args = parser.parse_args(argv)
    from mixweight.core.distributed import close_world, init_world
    from mixweight.data.remote import set_cache_dir

    try:
        set_cache_dir(getattr(args, "cache_dir", None))  # where remote corpora are cached, for every command
    except MixweightError as exc:
        _refuse(str(exc))

    # Under torchrun, one process group serves every stage of the command (a DoReMi run trains twice).
    world = init_world()
    try:
        with held_deprecations():  # a refused command prints its error line alone
            args.func(args)
    except MixweightError as exc:
        _refuse(str(exc))
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        _refuse(write_failure(exc))
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and not _out_of_memory(exc):
            raise
        _refuse(
            f"out of memory ({first_line(exc) if str(exc) else 'MemoryError'}): a size in the command (batch size, "
            "seq_len, eval blocks, vocabulary) needs more memory than this machine has; lower it"
        )
    finally:
        close_world(world)


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocation failures: OutOfMemoryError (a device), or the CPU allocator's RuntimeError."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def _refuse(message: str) -> None:
    print(f"mixweight: error: {message}", file=sys.stderr)
    sys.exit(2)
