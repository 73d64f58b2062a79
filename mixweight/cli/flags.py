"""Flags from config dataclasses: one argparse argument per field (name, type, default and help from the field),
``--BLOCK.KEY`` flags for a nested block, hidden flags for renamed and moved keys, and the given flags turned
back into config values. One spelling per option in --help; no abbreviations; a refusal is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from mixweight.core.config import ARGUMENT, FLAGS, HELP, MOVED, NESTED, OWNED, load_config, renamed_keys

BOOL_FLAGS_NEGATABLE = {"progress", "match_repetition"}


class ExactFlagParser(argparse.ArgumentParser):
    """No abbreviated flags (argparse's default takes any unique prefix): with --train.KEY flags a prefix such as
    --train.r would silently mean --train.report-to. Subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, like every other refusal (argparse's own prints the usage first)."""
        refuse(f"{self.prog}: {message} (see {self.prog} --help)")


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
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
    help_text = help_text.replace("%", "%%")  # argparse formats help with %: a literal "5%" would be a format code
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


def refuse_owned_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
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


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    # Not a config key: where a cache lives changes no result, so it stays out of config hashes.
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="local cache for corpora given as URLs (s3://, gs://, ..., file:///DIR); put it on "
        "node-local disk (default: %(default)s, meaning $MIXWEIGHT_CORPUS_CACHE, else "
        "$MIXWEIGHT_CACHE/remote, else the platform cache directory's mixweight/remote)",
    )


def overrides(args: argparse.Namespace, cls) -> dict:
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


def command_config(args, cls):
    """The command's config from its flags (the dataclass's defaults for the rest), checked once."""
    return load_config(cls, None, overrides(args, cls), cls.COMMAND)


def refuse(message: str) -> None:
    """The command's one error line, exit status 2 (argparse's, for a refused command line)."""
    print(f"mixweight: error: {message}", file=sys.stderr)
    sys.exit(2)
