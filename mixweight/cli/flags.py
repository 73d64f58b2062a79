"""Flags from config dataclasses: one argparse argument per field (name, type, default and help from the field),
``--BLOCK.KEY`` flags for a block (a proxy's ``--train.lr``, a typed block's ``--sample-weighting.r`` and
``--mixing.odm.reward``; ``--sample-weighting NAME`` for its shorthand), hidden flags for renamed and moved keys,
and the given flags turned back into config values. One spelling per option in --help; no abbreviations; a
refusal is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from mixweight.core.config import (
    ARGUMENT,
    FLAGS,
    HELP,
    INLINE,
    MOVED,
    NESTED,
    OWNED,
    SHORTHAND,
    inline_field,
    load_config,
    merge_values,
    renamed_keys,
)

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
        if dataclasses.is_dataclass(hints[field.name]):
            _add_block_flags(parser, field.name, hints[field.name], field.metadata.get(HELP, ""))
            continue
        flags = field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),)
        argument = field.metadata.get(ARGUMENT, {})
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        _add_flag(
            parser, flags, field.name, hints[field.name], field.metadata.get(HELP, ""), default, argument=argument
        )
    for old, new in renamed_keys(cls).items():  # the spelling of before: accepted for a release, not in --help
        kind = _dotted_type(cls, new)
        if kind is not None:
            parser.add_argument(f"--{old.replace('_', '-')}", dest=old, type=_flag_type(kind),
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip


def _add_block_flags(parser, dest: str, cls, help_text: str) -> None:
    """--BLOCK.KEY for every key of a typed block (and of the blocks inside it); --BLOCK VALUE for its shorthand.
    A top-level block's flags are one group of --help, described by the block's help text."""
    flag = "--" + dest.replace("_", "-")
    if "." not in dest and isinstance(parser, argparse.ArgumentParser):
        parser = parser.add_argument_group(f"{flag} (YAML: {dest}: {{...}})", help_text or None)
    defaults = cls()
    shorthand = getattr(cls, SHORTHAND, None)
    if shorthand is not None:
        _add_flag(parser, (flag,), dest, str, f"{help_text}; the flag takes the {shorthand}, {flag}.KEY the rest",
                  getattr(defaults, shorthand), argument={"metavar": shorthand.upper()})  # fmt: skip
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        inner = f"{dest}.{field.name}"
        if INLINE in field.metadata:
            for key, block in field.metadata[INLINE]().items():
                _add_block_flags(parser, f"{dest}.{key}", block, "")
        elif dataclasses.is_dataclass(hints[field.name]):
            _add_block_flags(parser, inner, hints[field.name], field.metadata.get(HELP, ""))
        elif field.name != shorthand:
            flags = ("--" + inner.replace("_", "-"),)
            default = getattr(defaults, field.name)
            metavar = {"metavar": field.name.upper()}
            _add_flag(parser, flags, inner, hints[field.name], field.metadata.get(HELP, ""), default, argument=metavar)


def _dotted_type(cls, dotted: str):
    """The type of a dotted key of `cls` (``sample_weighting.r`` -> float), None when it names nothing."""
    head, _, rest = dotted.partition(".")
    hints = typing.get_type_hints(cls)
    inline = inline_field(cls)
    kind = hints.get(head) if head in hints and (inline is None or head != inline.name) else None
    if kind is None and inline is not None:
        kind = inline.metadata[INLINE]().get(head)
    if not rest or kind is None:
        return kind
    return _dotted_type(kind, rest) if dataclasses.is_dataclass(kind) else None


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
        flag = token.split("=", 1)[0]
        while True:  # --train.mixing.every: the owned block --train.mixing
            message = OWNED_FLAGS.get((command, flag))
            if message is not None or flag.count(".") < 2:
                break
            flag = flag.rsplit(".", 1)[0]
        if message is not None:
            print(f"mixweight: error: {message}", file=sys.stderr)
            sys.exit(2)


def _add_nested_flags(parser: argparse.ArgumentParser, cls, block) -> None:
    """--BLOCK.KEY for every key of the block's config class that the outer config does not set itself."""
    inner, owned, moved = block.metadata[NESTED], block.metadata[OWNED], block.metadata[MOVED]
    hints = typing.get_type_hints(inner)
    defaults = getattr(cls, "TRAIN_DEFAULTS", {})  # the method's own defaults for the block
    notes = getattr(cls, "TRAIN_DEFAULT_NOTES", {})  # defaults that follow other options
    command = getattr(cls, "COMMAND", parser.prog)
    for old, new in renamed_keys(inner).items():  # the old spelling of a key in an owned block: refused as such
        owner = new.split(".")[0]
        if owner in owned:
            OWNED_FLAGS[(command, f"--{block.name}.{old.replace('_', '-')}")] = (
                f"{command}: '{block.name}.{old}' (now '{block.name}.{new}') cannot be set here: {owned[owner]}"
            )
    for field in dataclasses.fields(inner):
        if field.name in owned:  # no flag; given anyway, main() refuses it with its reason (not "unrecognized")
            for flag in field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),):
                OWNED_FLAGS[(command, f"--{block.name}.{flag[2:]}")] = (
                    f"{command}: '{block.name}.{field.name}' cannot be set here: {owned[field.name]}"
                )
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            help_text = field.metadata.get(HELP, "")
            _add_block_flags(parser, f"{block.name}.{field.name}", hints[field.name], help_text)
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
    given = vars(args)
    for key in sorted(given, key=lambda k: k.count(".")):  # a block's shorthand before its keys
        value, (block, *inner) = given[key], key.split(".")
        if block not in names and not (key in aliases and not inner):
            continue
        for part in reversed(inner):
            value = {part: value}
        values = merge_values(values, {block: value}, cls)
    return values


def command_config(args, cls):
    """The command's config from its flags (the dataclass's defaults for the rest), checked once."""
    return load_config(cls, None, overrides(args, cls), cls.COMMAND)


def refuse(message: str) -> None:
    """The command's one error line, exit status 2 (argparse's, for a refused command line)."""
    print(f"mixweight: error: {message}", file=sys.stderr)
    sys.exit(2)
