"""Nested blocks and old spellings: a method's `train:` block, keys that moved into a block or were renamed.

A block (core.config's `nested`: a proxy's ``train: {lr: 2e-3}``) names its keys' old homes here; `nest_moved_keys`
and `rename_keys` read the spellings of before (a flat key now in a block, an old name) for one release, each
with one deprecation line on stderr, held back by `held_deprecations` until the command succeeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any

from mixweight.core.blocks import NESTED, SHORTHAND, block_class, expand_shorthand
from mixweight.errors import MixweightError, brief

MOVED = "moved"  # field metadata key of a nested block: its keys that used to be top-level (deprecated aliases)
OWNED = "owned"  # field metadata key of a nested block: {key: why it is refused} for keys the outer config sets


def nested_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if NESTED in f.metadata]


def nest_moved_keys(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` with the deprecated top-level aliases of `cls`'s nested blocks moved into their block.

    One deprecation line on stderr (main process) names every alias used; a key given in both
    spellings is refused, naming both. `values` itself is not changed.
    """
    values = dict(values)
    used = []
    for block in nested_fields(cls):
        inner = values.get(block.name)
        inner = dict(inner) if isinstance(inner, dict) else inner
        for key in block.metadata[MOVED]:
            if key not in values:
                continue
            nested_name = f"{block.name}.{key}"
            if isinstance(inner, dict) and key in inner:
                raise MixweightError(
                    f"{where}: '{key}' (--{key.replace('_', '-')}, deprecated) and '{nested_name}' "
                    f"(--{nested_name.replace('_', '-')}) both given; give only '{nested_name}'"
                )
            if inner is None:
                inner = {}
            if isinstance(inner, dict):
                inner[key] = values.pop(key)
                used.append(nested_name)
        if block.name in values or inner:
            values[block.name] = inner
    if used:
        from mixweight.core.distributed import is_main_process

        if is_main_process():
            old = ", ".join(name.split(".", 1)[1] for name in used)
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in used)
            _deprecated(
                f"mixweight: deprecated: {where}: {old} moved into the {used[0].split('.', 1)[0]} block: write "
                f"{', '.join(used)} (flags {flags}); the old spelling is accepted for one more release"
            )
    return values


RENAMED_KEYS = "RENAMED_KEYS"  # a config class's {old key: new dotted key}: spellings of before, read for a release


def renamed_keys(cls) -> dict[str, str]:
    return dict(getattr(cls, RENAMED_KEYS, {}))


def rename_keys(cls, values: dict[str, Any], where: str, quiet: bool = False) -> dict[str, Any]:
    """`values` with the old spellings of `cls`'s renamed keys (`RENAMED_KEYS`) under their new names.

    A new name may be dotted (``odm_alpha`` -> ``mixing.odm.alpha``): the value goes into that block.
    One deprecation line (main process) names every old spelling used, unless `quiet` (reading a file
    an older mixweight wrote); a key given in both spellings is refused naming both.
    """
    renames = renamed_keys(cls)
    if not any(key in renames for key in values):
        return values
    values = dict(values)
    used = []
    for old, new in renames.items():
        if old not in values:
            continue
        value = values.pop(old)
        *blocks, last = new.split(".")
        target, target_cls = values, cls
        for block in blocks:
            target_cls = block_class(target_cls, block)
            inner = target.get(block)
            inner = {} if inner is None else expand_shorthand(target_cls, inner)  # a bare value: its SHORTHAND key
            if not isinstance(inner, dict):
                shorthand = getattr(target_cls, SHORTHAND, None)
                expected = f"a {shorthand} or a mapping" if shorthand else "a mapping"
                raise MixweightError(f"{where}: '{block}' must be {expected} to hold '{old}', got {brief(inner)}")
            target[block] = inner = dict(inner)
            target = inner
        if last in target:
            raise MixweightError(f"{where}: '{old}' (deprecated) and '{new}' both given; give only '{new}'")
        target[last] = value
        used.append((old, new))
    if used and not quiet:
        from mixweight.core.distributed import is_main_process

        if is_main_process():
            spelled = ", ".join(f"{old} -> {new}" for old, new in used)
            flags = ", ".join(f"--{old.replace('_', '-')} -> --{new.replace('_', '-')}" for old, new in used)
            _deprecated(
                f"mixweight: deprecated: {where}: renamed keys {spelled} (flags {flags}); the old spelling is "
                "accepted for one more release"
            )
    return values


_held: list[str] | None = None  # deprecation lines held back by `held_deprecations` (the CLI)


def _deprecated(line: str) -> None:
    if _held is None:
        print(line, file=sys.stderr, flush=True)
    elif line not in _held:
        _held.append(line)


@contextlib.contextmanager
def held_deprecations():
    """Hold deprecation lines back while the body runs; they are printed (once each) when it succeeds.

    The CLI runs every command inside it, so a refused command prints its one error line and
    nothing else, and a command that runs still says what it read in a deprecated form.
    """
    global _held
    _held = []
    try:
        yield
        for line in _held:
            print(line, file=sys.stderr, flush=True)
    finally:
        _held = None
