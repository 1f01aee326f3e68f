"""The package's import direction, top to bottom only (STYLE.md):

    cli, commands  ->  api, demo  ->  workflows  ->  deploy  ->  learn, evaluate  ->  embed, data
    ->  schema, atomic, version, errors, public

A module may import its own layer and any layer below; an import of a higher layer fails here,
naming the module and what it imports. ``learn`` and ``evaluate`` share a layer, but only
``learn`` may use ``evaluate`` (its metrics and reports), never the other way round, so the two
cannot form a cycle; likewise ``embed`` may use ``data``, not the reverse.

Inside a layer, no two files may import each other, directly or round a longer circle
(``test_no_import_cycle_between_files``): every import counts, a function-level one too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skinfeat"
LAYERS = [("cli", "commands"), ("api", "demo", "__init__"), ("workflows",), ("deploy",),
          ("learn", "evaluate"), ("embed", "data"),
          ("schema", "atomic", "version", "errors", "public", "progress")]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ONE_WAY = {("evaluate", "learn"), ("data", "embed")}   # (importer, imported) refused


def part(module: str) -> str:
    """skinfeat.learn.cv -> learn; skinfeat.atomic -> atomic; skinfeat -> __init__."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(path: Path, names: bool = False) -> set[str]:
    """The skinfeat modules ``path`` imports, anywhere in it (a function-level import too); with
    ``names``, ``from x import y`` also gives ``x.y`` (``y`` may be a module)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else []
            if names or not node.module:
                targets += [f"{target}.{a.name}" for a in node.names]
            found.update(t for t in targets if t.split(".")[0] == "skinfeat")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "skinfeat")
    return found


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, not ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from skinfeat.x import name`` -> skinfeat.x
    unless ``name`` is itself a module)."""
    known = modules()
    graph = {}
    for module, path in known.items():
        targets = set()
        for target in imports(path, names=True):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_direct_and_long_circles():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_between_files():
    circles = cycles(import_graph())
    assert not circles, "files that import each other (directly or round a circle):\n" + \
        "\n".join(" <-> ".join(c) for c in circles)


def test_every_module_belongs_to_a_layer():
    parts = {part(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
             for p in PACKAGE.rglob("*.py")}
    assert parts <= set(RANK), f"modules outside every layer: {sorted(parts - set(RANK))}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        me = part(module)
        for target in sorted(imports(path)):
            them = part(target)
            if them == me:
                continue
            if RANK[them] < RANK[me] or (me, them) in ONE_WAY:
                upward.append(f"{module} imports {target} ({me} -> {them})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_documented_layout_matches_the_tree():
    """docs/architecture.md's layer block names only paths that exist under ``skinfeat/``, and
    every folder of the package (a subpackage, or ``static/``) is in it."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"(?<![\w./-])((?:[a-z_]+/)*[a-z_]+(?:\.py|\.html|/))", block))
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert not missing, f"docs/architecture.md names what skinfeat/ lacks: {missing}"
    folders = {str(p.relative_to(PACKAGE)) + "/" for p in PACKAGE.rglob("*")
               if p.is_dir() and p.name != "__pycache__"}
    assert folders <= named, f"folders docs/architecture.md omits: {sorted(folders - named)}"
