"""The package's import direction, top to bottom only (STYLE.md):

    cli, commands  ->  api, demo  ->  workflows  ->  deploy  ->  learn, evaluate  ->  embed, data
    ->  schema, atomic, version

A module may import its own layer and any layer below; an import of a higher layer fails here,
naming the module and what it imports. ``learn`` and ``evaluate`` share a layer, but only
``learn`` may use ``evaluate`` (its metrics and reports), never the other way round, so the two
cannot form a cycle; likewise ``embed`` may use ``data``, not the reverse.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skinfeat"
LAYERS = [("cli", "commands"), ("api", "demo", "__init__"), ("workflows",), ("deploy",),
          ("learn", "evaluate"), ("embed", "data"), ("schema", "atomic", "version")]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ONE_WAY = {("evaluate", "learn"), ("data", "embed")}   # (importer, imported) refused


def part(module: str) -> str:
    """skinfeat.learn.cv -> learn; skinfeat.atomic -> atomic; skinfeat -> __init__."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found.update(n for n in names if n.split(".")[0] == "skinfeat")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "skinfeat")
    return found


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
