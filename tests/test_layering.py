"""Imports point down the stack: a module may import its own package and any lower layer, never a higher one.

Imports under `if TYPE_CHECKING:` are annotations only and are not counted.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mixweight"
# Lowest first. A module's layer is that of its first dotted name under mixweight (the root __init__ is 0).
LAYERS = [
    {"errors", "core", "__init__"},
    {"data", "weighting"},
    {"sampling"},
    {"train"},
    {"eval", "hf"},
    {"domain"},
    {"report"},
    {"pipeline", "doctor"},
    {"cli", "__main__"},
]


def layer(dotted: str) -> int:
    parts = dotted.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, names in enumerate(LAYERS) if name in names)


def imported_modules(tree: ast.AST):
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mixweight"):
            if node.module == "mixweight":  # `from mixweight import x`: x is a subpackage or a root name
                yield from (f"mixweight.{a.name}" if a.name != "__version__" else "mixweight" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mixweight"))


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for target in imported_modules(ast.parse(path.read_text())):
            if layer(target) > layer(module):
                found.append(f"{module} imports {target}")
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages | modules <= set().union(*LAYERS)


def test_the_check_sees_an_upward_import(tmp_path):
    tree = ast.parse("from mixweight.train.loop import train\nif TYPE_CHECKING:\n    from mixweight.report import x\n")
    assert list(imported_modules(tree)) == ["mixweight.train.loop"]
    assert layer("mixweight.sampling.schedule") < layer("mixweight.train.loop")


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (at the top or inside a function: a lazy import is still one)."""
    graph = {}
    for path in sorted((PACKAGE.parent / package.replace(".", "/")).glob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[module] = {t for t in imported_modules(ast.parse(path.read_text())) if t.startswith(package + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_no_import_circle_anywhere():
    """Not even through a lazy import inside a function (train/config.py's check of the online keys)."""
    assert cycles(import_graph("mixweight")) == []


def test_the_manifest_reads_local_directories_only():
    """Network I/O (a corpus URL) lives in data/remote.py, reached through data/corpus.py's open_corpus."""
    imported = set(imported_modules(ast.parse((PACKAGE / "data" / "manifest.py").read_text())))
    assert "mixweight.data.remote" not in imported and "mixweight.data.corpus" not in imported


def test_the_cycle_check_sees_a_lazy_circle():
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
