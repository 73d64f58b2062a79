"""Typed blocks inside a config: ``sample_weighting: {name: linupper, r: 0.4}``, ``mixing: {every: 50, odm: {...}}``.

A block is a config dataclass as a field's type (built and checked by core.config's `build_config`); a
class with a SHORTHAND key takes a bare value for it (``sample_weighting: linupper``). An inline field
(`inline_blocks`) holds one block per key of a registry, written in the outer block itself
(``mixing.odm``), so a plug-in's options need no field of their own. `config_dict` is the plain form
written to config.yaml, `merge_values` layers one set of values over another block by block, and
`with_values` sets dotted keys of a built config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")
HELP = "help"  # dataclass field metadata key: the flag's help text in `mixweight ... --help`

INLINE = "inline"  # field metadata key: a callable giving {key: config class} of the typed blocks the field holds
NESTED = "nested"  # field metadata key: the config class whose keys a nested block (a mapping) may hold
SHORTHAND = "SHORTHAND"  # a config class's key that a bare value sets: `sample_weighting: linupper` is {name: ...}


def inline_blocks(classes, help_text: str):
    """A field holding typed blocks whose keys sit in the outer config itself: ``mixing: {every: 50, odm: {...}}``.

    `classes()` gives {key: config class} (called when a config is built, so plug-ins registered by then take
    part); every key gets its block, its class's defaults where the YAML gives none. `config_dict` writes
    the blocks back inline, flags are ``--OUTER.KEY.FIELD``.
    """
    return dataclasses.field(
        default_factory=lambda: {key: cls() for key, cls in classes().items()},
        metadata={HELP: help_text, INLINE: classes},
    )


def inline_field(cls) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if INLINE in f.metadata), None)


def config_dict(config) -> dict[str, Any]:
    """A config as plain values (what config.yaml holds), its inline blocks written under their own keys."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if INLINE in f.metadata:
            values.update({key: _plain(block) for key, block in value.items()})
        else:
            values[f.name] = _plain(value)
    return values


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def expand_shorthand(cls, value):
    """`value` for a block of `cls`: a bare value as the mapping its SHORTHAND key means, anything else as it is."""
    shorthand = getattr(cls, SHORTHAND, None)
    return {shorthand: value} if shorthand is not None and isinstance(value, str) else value


def dotted_keys(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``{"mixing": {"every": 5}}`` -> ``{"mixing.every": 5}``)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(dotted_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def undotted(flat: dict[str, Any]) -> dict[str, Any]:
    """One level of dotted keys as nested mappings: `dotted_keys` undone."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *blocks, last = dotted.split(".")
        target = nested
        for block in blocks:
            target = target.setdefault(block, {})
        target[last] = value
    return nested


def value_at(config, dotted: str):
    """The value of a dotted key of a built config (``mixing.odm.reward``), through inline blocks too."""
    for part in dotted.split("."):
        inline = inline_field(type(config))
        blocks = getattr(config, inline.name) if inline is not None else {}
        config = blocks[part] if part in blocks else getattr(config, part)
    return config


def block_class(cls, key: str):
    """The config class of `cls`'s block `key` (a typed field, a nested block of overrides or an inline block),
    None where `key` is no block."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    inline = inline_field(cls)
    if inline is not None and key in (classes := inline.metadata[INLINE]()):
        return classes[key]
    field = next((f for f in dataclasses.fields(cls) if f.name == key), None)
    if field is not None and NESTED in field.metadata:
        return field.metadata[NESTED]
    annotation = typing.get_type_hints(cls).get(key)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    return next((option for option in options if dataclasses.is_dataclass(option)), None)


def merge_values(base: dict[str, Any], override: dict[str, Any], cls=None) -> dict[str, Any]:
    """`override` over `base` (values of config class `cls`), blocks (mappings) merged key by key at every depth;
    a bare value over a block (or a block over a bare value) is the block's SHORTHAND (``sample_weighting:
    linupper`` over ``sample_weighting: {r: 0.2}`` is ``{name: linupper, r: 0.2}``); for a block class without
    one the later value replaces the earlier, and building the config refuses a bare value."""
    merged = dict(base)
    for key, value in override.items():
        before, block = merged.get(key), block_class(cls, key)
        if isinstance(before, dict) or isinstance(value, dict):
            before, value = expand_shorthand(block, before), expand_shorthand(block, value)
        if isinstance(value, dict) and isinstance(before, dict):
            value = merge_values(before, value, block)
        merged[key] = value
    return merged


def with_values(config: C, values: dict[str, Any]) -> C:
    """A copy of `config` with dotted keys set (``{"mixing.every": 10, "mixing.doremi.reference": DIR}``), every
    block on the way copied, nothing validated (the caller completes a config that was validated)."""
    nested_values: dict[str, Any] = {}
    for dotted, value in values.items():
        head, _, rest = dotted.partition(".")
        if rest:
            nested_values.setdefault(head, {})[rest] = value
        else:
            nested_values[head] = value
    inline = inline_field(type(config))
    changes = {}
    for key, value in nested_values.items():
        if inline is not None and key in getattr(config, inline.name):
            blocks = changes.setdefault(inline.name, dict(getattr(config, inline.name)))
            blocks[key] = with_values(blocks[key], value)
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(config, key, None)):
            changes[key] = with_values(getattr(config, key), value)
        else:
            changes[key] = value
    return dataclasses.replace(config, **changes)
