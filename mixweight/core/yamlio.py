"""The one YAML reader: `yaml.safe_load`, except that a key given twice in one mapping is an error.

`yaml.safe_load` keeps the last of two equal keys without a word, so a pipeline YAML that
names the same arm twice silently loses the first. Every YAML file mixweight reads (user
configs, pipeline configs, schedules, the config.yaml of a run) goes through `load_yaml`.
Like `yaml.safe_load` it constructs plain data only (no Python objects, no code).
"""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice; a yaml.YAMLError, so existing `except yaml.YAMLError` report it."""


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *base' then overriding a merged key is YAML's documented merge, not a mistake
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it below
                if first is not None:
                    raise DuplicateKeyError(
                        f"line {line}: key {key!r} appears twice in one mapping (first at line {first}); "
                        "YAML would silently keep only the last, so remove or rename one"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """`yaml.safe_load(text)` that refuses duplicate keys (DuplicateKeyError names the line and the key)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass: plain data only
