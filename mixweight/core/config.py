"""Typed configs loaded once from YAML and command-line flags.

Each stage has one dataclass. Values come, in rising priority, from the dataclass
defaults, a YAML file (``--config``), and explicit flags. Unknown keys are refused
with the closest valid key, values are checked against the field's type, and the
resolved config is what gets written into the output directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mixweight.core.blocks import (  # noqa: F401 - re-exported: configs are made and read through this module
    HELP,
    INLINE,
    NESTED,
    SHORTHAND,
    config_dict,
    dotted_keys,
    expand_shorthand,
    inline_blocks,
    inline_field,
    merge_values,
    undotted,
    value_at,
    with_values,
)
from mixweight.core.renames import (  # noqa: F401 - the block helpers, re-exported for their callers
    MOVED,
    OWNED,
    held_deprecations,
    nest_moved_keys,
    nested_fields,
    rename_keys,
    renamed_keys,
)
from mixweight.core.yamlio import load_yaml
from mixweight.errors import MixweightError, brief, did_you_mean

C = TypeVar("C")


FLAGS = "flags"  # field metadata key: the flag names when --<field-name> will not do (see option's flags)
ARGUMENT = "argument"  # field metadata key: how the command line gives it (see option's keyword arguments)
LIMITS = "limits"  # field metadata key: a Limits for the field's numbers (see `limits_of`)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What numbers a field takes beyond its type: checked where every value enters (`build_config`)."""

    minimum: float | None = None
    maximum: float | None = None
    why: str = "a larger value is a typo or an overflow, not a setting"
    allow_inf: bool = False  # floats: inf (and -inf) accepted; NaN never is


# The CPUs this process may run on (a container's share, not the host's count).
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
MAX_INT = 10**12  # any integer option: 10^12 steps, blocks or runs would run for ages or exhaust memory at once
# Fields whose names say what their numbers are, wherever they appear (every command's seed, the pipeline's
# seeds, every batch size): narrower limits than MAX_INT, each with its reason.
LIMITS_BY_NAME = {
    "seed": Limits(0, 2**32 - 1, "a seed is an unsigned 32-bit integer (numpy's range)"),
    "seeds": Limits(0, 2**32 - 1, "a seed is an unsigned 32-bit integer (numpy's range)"),
    "batch_size": Limits(None, 2**20, "a batch of more than 2^20 sequences exhausts memory at once"),
    "eval_batch_size": Limits(None, 2**20, "a batch of more than 2^20 sequences exhausts memory at once"),
    "seq_len": Limits(None, 2**20, "blocks of more than 2^20 tokens exhaust memory at once"),
    "num_proc": Limits(None, USABLE_CPUS, "the CPUs this process may use: more worker processes only cost memory"),
    "token_budget": Limits(None, 10**16, "10^16 tokens is a thousand times a frontier model's run"),
    "tokens_per_domain": Limits(None, 10**9, "the synthetic corpus is made in memory"),
    "val_blocks": Limits(None, 10**7, "the synthetic corpus is made in memory"),
    "runs": Limits(None, 10**5, "RegMix's own swarm is 512 runs; the swarm's mixtures are drawn in memory"),
}
DEFAULT_LIMITS = Limits(None, MAX_INT)


def option(
    default,
    help_text: str,
    flags: tuple[str, ...] = (),
    *,
    positional: bool = False,
    required: bool = False,
    choices: tuple[str, ...] = (),
    repeated: bool = False,
    metavar: str | None = None,
    values: tuple[str, ...] = (),
    limits: Limits | None = None,
):
    """A config field with its help text: one definition serves the YAML key, the flag and its default.

    ``flags`` replaces the flag ``--<name-with-dashes>`` (the first is the documented one, the
    rest aliases), for a field whose plain flag a launcher would take as its own: torchrun's
    parser reads ``--r`` as an ambiguous abbreviation of its ``--rdzv-*`` options.
    ``positional`` makes it a command-line argument without a flag (a list field takes one or more),
    ``required`` a flag the command cannot run without, ``choices`` the only values a flag takes,
    ``repeated`` a list flag given once per item (``--weights A --weights B``), ``values`` the
    names of a list flag's values when it takes a fixed number of them (``--swarm-table MIXTURES.csv
    LOSSES.csv``), and ``limits`` bounds its numbers (default: `limits_of`'s rule by name).
    """
    metadata = {HELP: help_text}
    if flags:
        metadata[FLAGS] = tuple(flags)
    if limits is not None:
        metadata[LIMITS] = limits
    argument = {"positional": positional, "required": required, "choices": tuple(choices), "repeated": repeated}
    if metavar is not None:
        argument["metavar"] = metavar
    if values:
        argument["nargs"], argument["metavar"] = len(values), tuple(values)
    if any(argument.values()):
        metadata[ARGUMENT] = argument
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls, help_text: str, moved: tuple[str, ...] = (), owned: dict[str, str] | None = None):
    """A field holding a block of `cls` overrides: ``train: {lr: 2e-3}`` in YAML, ``--train.lr`` as a flag.

    The block keeps only the keys given (the outer config supplies its own defaults for the rest).
    ``moved`` names keys that were top-level before (``lr`` for ``train.lr``): still accepted for a
    release, with one deprecation line on stderr. ``owned`` maps the keys the outer config sets
    itself to why they are refused in the block.
    """
    metadata = {HELP: help_text, NESTED: cls, MOVED: tuple(moved), OWNED: dict(owned or {})}
    return dataclasses.field(default_factory=dict, metadata=metadata)


def _build_nested(block: dataclasses.Field, value: Any, where: str) -> dict[str, Any]:
    """A nested block checked key by key against its config class: known, not owned, the right type."""
    name = block.name
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MixweightError(
            f"{where}: '{name}' must be a mapping of {block.metadata[NESTED].__name__} keys, got {brief(value)}"
        )
    cls, owned = block.metadata[NESTED], block.metadata[OWNED]
    for old, new in renamed_keys(cls).items():  # an old spelling of a key the block may not set: named as written
        if old in value and new.split(".")[0] in owned:
            why = owned[new.split(".")[0]]
            raise MixweightError(f"{where}: '{name}.{old}' (now '{name}.{new}') cannot be set here: {why}")
    value = rename_keys(cls, value, f"{where}: '{name}'")
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in owned]
    coerced = {}
    for raw_key, item in value.items():
        key = str(raw_key).replace("-", "_")
        if key in owned:
            raise MixweightError(f"{where}: '{name}.{key}' cannot be set here: {owned[key]}")
        if key not in types_:
            hint = did_you_mean(key, valid)
            hint = hint.strip() if hint else f"valid keys: {', '.join(sorted(valid))}"
            raise MixweightError(f"{where}: unknown key '{name}.{key}'; {hint}")
        coerced[key] = _coerce(item, types_[key], f"{where}: '{name}.{key}'", limits_of(fields[key]))
    return coerced


def closest_hint(name: str, valid: list[str]) -> str:
    hint = did_you_mean(name, valid)
    return hint.strip() if hint else f"valid keys: {', '.join(sorted(valid))}"


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def limits_of(field: dataclasses.Field) -> Limits:
    """A field's limits: its own (`option(limits=)`), else those of its name (LIMITS_BY_NAME), else MAX_INT."""
    return field.metadata.get(LIMITS) or LIMITS_BY_NAME.get(field.name) or DEFAULT_LIMITS


def _check_number(value, limits: Limits, where: str):
    """`value` (an int or float of a field) within the field's limits; NaN never, inf only where allowed."""
    if isinstance(value, float) and math.isnan(value):
        raise MixweightError(f"{where}: expected a number, got nan")
    if isinstance(value, float) and math.isinf(value):
        if limits.allow_inf:
            return value
        raise MixweightError(f"{where}: expected a finite number, got {value}; give a finite value")
    if limits.minimum is not None and value < limits.minimum:
        raise MixweightError(f"{where}: {brief(value)} is below the limit {limits.minimum:,} ({limits.why})")
    if limits.maximum is not None and value > limits.maximum:
        raise MixweightError(f"{where}: {brief(value)} is above the limit {limits.maximum:,} ({limits.why})")
    return value


def _coerce(value: Any, annotation: Any, where: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Check `value` against a field annotation (and its numbers against `limits`); accept ints where floats are
    expected. A message echoes at most a short excerpt of the value (`brief`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, limits)
            except MixweightError as exc:
                errors.append(str(exc))
        raise MixweightError(errors[0] if len(errors) == 1 else f"{where}: {brief(value)} matches none of {annotation}")
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list):
            raise MixweightError(f"{where}: expected a list, got {brief(value)}")
        return [_coerce(v, item, f"{where}[{i}]", limits) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise MixweightError(f"{where}: expected a mapping, got {brief(value)}")
        return value
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):  # a typed section: built (and validated) where it enters
        if isinstance(value, annotation):
            return value
        if value is None:
            value = {}
        shorthand = getattr(annotation, SHORTHAND, None)
        value = expand_shorthand(annotation, value)
        if not isinstance(value, dict):
            hint = f"a {shorthand} or " if shorthand else ""
            raise MixweightError(f"{where}: expected {hint}a mapping of {annotation.__name__} keys, got {brief(value)}")
        outer, _, path = where.rpartition(": '")  # `where` names the key: "FILE: 'mixing'"
        return build_config(annotation, value, outer or where, f"{path.rstrip(chr(39))}." if outer else "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise MixweightError(f"{where}: expected true or false, got {brief(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_number(value, limits, where)
        raise MixweightError(f"{where}: expected an integer, got {brief(value)}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, int) or abs(value) < 10**308 else math.inf
        elif isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise MixweightError(f"{where}: expected a number, got {brief(value)}")
        return _check_number(number, limits, where)
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MixweightError(f"{where}: expected a string, got {brief(value)}")
    return value


def build_config(cls: type[C], values: dict[str, Any], where: str, block: str = "") -> C:
    """Make a `cls` from a mapping, refusing unknown keys and values of the wrong type. `block` is the dotted path
    of a typed block inside another config (``mixing.``), named in messages."""
    if block:  # dashes read as underscores inside a block too, as load_config reads the top level
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
    values = rename_keys(cls, values, where)
    values = nest_moved_keys(cls, values, where)
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    inline = inline_field(cls)
    inline_classes = inline.metadata[INLINE]() if inline is not None else {}
    valid = [name for name in fields if inline is None or name != inline.name] + list(inline_classes)
    for key in values:
        if key not in valid:
            hint = closest_hint(f"{block}{key}", [f"{block}{name}" for name in valid])
            raise MixweightError(f"{where}: unknown key '{block}{key}'; {hint}")
    blocks = {f.name: f for f in nested_fields(cls)}
    coerced = {
        k: _build_nested(blocks[k], v, where)
        if k in blocks
        else _coerce(v, types_[k], f"{where}: '{block}{k}'", limits_of(fields[k]))
        for k, v in values.items()
        if k not in inline_classes
    }
    if inline is not None:  # every block, its defaults where none was given
        coerced[inline.name] = {
            key: _coerce(values.get(key), block_cls, f"{where}: '{block}{key}'")
            for key, block_cls in inline_classes.items()
        }
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in coerced and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise MixweightError(f"{where}: missing required key(s) {[block + name for name in missing]}")
    config = cls(**coerced)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MixweightError(f"--config {path}: no such file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))  # refuses duplicate keys
    except UnicodeDecodeError as exc:
        raise MixweightError(f"{path}: not UTF-8 text (byte {exc.start}); a config is a YAML text file") from exc
    except yaml.YAMLError as exc:
        raise MixweightError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MixweightError(f"{path}: expected a mapping of keys to values at the top level")
    return raw


def load_config(cls: type[C], yaml_path: str | Path | None, overrides: dict[str, Any], where: str = "config") -> C:
    """Defaults < YAML file < explicit overrides (flags); dashes in keys are read as underscores.

    A block (`train:`, `sample_weighting:`) is merged key by key at every depth (`merge_values`):
    ``--train.lr`` overrides the YAML's ``train: {lr: ...}`` and keeps its other keys. Each source's old
    spellings are renamed before the merge, so a flag overrides the YAML in either spelling. `where` names
    the source in messages when there is no YAML file.
    """
    values: dict[str, Any] = {}
    source = str(yaml_path) if yaml_path else where
    if yaml_path is not None:
        values.update({str(k).replace("-", "_"): v for k, v in read_yaml(yaml_path).items()})
        values = rename_keys(cls, values, source)
    values = merge_values(values, rename_keys(cls, overrides, where), cls)
    return build_config(cls, values, where=source)


def to_yaml(config) -> str:
    return yaml.safe_dump(config_dict(config), sort_keys=False)


def require(condition: bool, message: str) -> None:
    """Config validation helper: raise a MixweightError with `message` unless `condition`."""
    if not condition:
        raise MixweightError(message)
