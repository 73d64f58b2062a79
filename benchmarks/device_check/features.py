"""Which optional `mixweight train` features this checkout has, asked of the code: TrainConfig's fields.

A feature is named here once with its TrainConfig key; "block.key" is a key inside a nested block (a
field whose type is a config dataclass, or a `core.config.nested` block). The check sets a feature through
that key in the arm's YAML config, so a renamed flag changes nothing, and a key the config lacks makes the
arm report itself "not available", naming the key, instead of silently measuring something else.
"""

from __future__ import annotations

import copy
import dataclasses

# feature -> its TrainConfig key. When a field moves into a nested block, its line here is what changes.
FEATURES = {
    "sample_weighting": "sample_weighting.name",
    "loss_impl": "loss_impl",
    "compile": "compile",
}


def config_class():
    """The config the keys are looked up in (a function, so a test can swap the class it imports)."""
    from mixweight.train import config

    return config.TrainConfig


def has_key(cls, dotted: str) -> bool:
    """Whether config dataclass `cls` has the key `dotted` ("a" a field, "a.b" key b of the block a)."""
    head, _, rest = dotted.partition(".")
    field = next((f for f in dataclasses.fields(cls) if f.name == head), None)
    if field is None or not rest:
        return field is not None
    from mixweight.core.blocks import block_class

    inner = block_class(cls, head)
    return inner is not None and has_key(inner, rest)


def present() -> dict[str, bool]:
    """{feature: whether TrainConfig has its key} for every feature."""
    cls = config_class()
    return {feature: has_key(cls, key) for feature, key in FEATURES.items()}


def absent_reason(settings: dict, have: dict[str, bool]) -> str | None:
    """Why an arm with these {feature: value} settings cannot run here, or None when it can."""
    missing = [FEATURES[feature] for feature in settings if not have.get(feature, True)]
    if not missing:
        return None
    return f"mixweight.train.config.TrainConfig has no key {', '.join(map(repr, missing))} in this checkout"


def as_config(settings: dict, base: dict | None = None) -> dict:
    """`base` (a config mapping, not changed) with each {feature: value} under its key, nested along the dots."""
    from mixweight.core.config import merge_values, undotted

    values = undotted({FEATURES[f]: value for f, value in settings.items()})
    return merge_values(copy.deepcopy(base or {}), values, config_class())


def label(settings: dict) -> str:
    """The arm's settings as config text, for the tables: `loss_impl: full`."""
    return ", ".join(f"{FEATURES[f]}: {str(v).lower() if isinstance(v, bool) else v}" for f, v in settings.items())
