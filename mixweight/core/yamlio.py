"""The one YAML reader: `yaml.safe_load`, except that a key given twice in one mapping is an error, and a
document that would expand past MAX_NODES values through its aliases (a "billion laughs" bomb) or nests
deeper than Python can follow is refused.

`yaml.safe_load` keeps the last of two equal keys without a word, so a pipeline YAML that
names the same arm twice silently loses the first. An alias (`*a`) is a reference to an anchored
value: a few kilobytes of nested aliases name billions of values, which cost nothing until
something walks them (a hash of the config, an error message), and then cost minutes and
gigabytes. Every YAML file mixweight reads (user configs, pipeline configs, schedules, the
config.yaml of a run) goes through `load_yaml`. Like `yaml.safe_load` it constructs plain data only
(no Python objects, no code). Each refusal is a `yaml.YAMLError`, so callers report them as any
YAML error.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mixweight.errors import MixweightError, first_line

MAX_NODES = 1_000_000  # values a document may expand to, aliases followed; a real config holds a few thousand


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice; a yaml.YAMLError, so existing `except yaml.YAMLError` report it."""


class ExpansionError(yaml.YAMLError):
    """Aliases that expand past MAX_NODES values, or an alias inside its own anchor (an infinite value)."""


class NestingError(yaml.YAMLError):
    """Nesting deeper than the parser can follow (Python's recursion limit)."""


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many values `root` stands for with every alias followed; ExpansionError past `limit` or on a cycle.

    Each distinct node is sized once (a memo by identity), so the cost is that of the text, not of
    the expansion; iterative, so depth costs no recursion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > limit:
                raise ExpansionError(
                    f"the document expands to more than {limit:,} values through its aliases (*name); "
                    "write the values out or use fewer nested aliases"
                )
            continue
        if key in open_nodes:
            raise ExpansionError(f"line {node.start_mark.line + 1}: an alias refers to the value that holds it")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes and id(child) not in sizes:
                raise ExpansionError(f"line {child.start_mark.line + 1}: an alias refers to the value that holds it")
            stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class UniqueKeyLoader(yaml.SafeLoader):
    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            expanded_size(node)  # before anything is constructed from it
        return node

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
    """`yaml.safe_load(text)` that refuses duplicate keys, alias bombs and nesting past the recursion limit
    (each a yaml.YAMLError naming the line or the limit)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass: plain data only
    except RecursionError:
        raise NestingError("nested too deeply to be a config (lists or mappings inside each other)") from None


def load_yaml_file(path: str | Path, what: str):
    """The YAML in `path`, any defect (unreadable, not UTF-8, not YAML) one MixweightError naming `what` and path."""
    path = Path(path)
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise MixweightError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise MixweightError(f"{what} {path}: cannot be read ({exc.strerror or first_line(exc)})") from None
    except yaml.YAMLError as exc:
        raise MixweightError(f"{what} {path}: not valid YAML ({' '.join(str(exc).split())})") from None
