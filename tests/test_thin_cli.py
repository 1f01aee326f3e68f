"""The command line is thin (STYLE.md): every command parses its arguments, calls the public API
(``skinfeat.api``) and prints. A command module that imports the workflows, learn, deploy (or
any other library module) directly fails here, naming the module and the import; the few
exceptions are listed with their reason."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skinfeat"
COMMANDS = sorted((PACKAGE / "commands").glob("*.py")) + [PACKAGE / "cli.py"]

# (importing module, imported module): why it is not an API call.
ALLOWED = {
    ("skinfeat.commands.common", "skinfeat.data.presets"):
        "PRESETS: the choices of --preset, needed when the option is built",
    ("skinfeat.commands.common", "skinfeat.embed.backbone"):
        "DEFAULT_BACKBONE: the default of --backbone",
    ("skinfeat.commands.data", "skinfeat.embed.backbone"):
        "DEFAULT_BACKBONE: the default of --backbone",
    ("skinfeat.commands.data", "skinfeat.embed.weights"):
        "OFFLINE_ROUTES: the offline routes that `skinfeat weights` names",
    ("skinfeat.commands.stage_one", "skinfeat.embed.device"): "DEVICES, PRECISIONS: option choices",
    ("skinfeat.commands.stage_one", "skinfeat.embed.transform"): "RESIZE_MODES: option choices",
    ("skinfeat.commands.deploy", "skinfeat.embed.device"): "DEVICES: option choices",
    ("skinfeat.cli", "skinfeat.embed.backbone"): "DEFAULT_BACKBONE: the default of --backbone",
    ("skinfeat.cli", "skinfeat.embed.device"): "PRECISIONS: option choices",
    ("skinfeat.cli", "skinfeat.errors"): "SkinfeatError: turned into a one-line error",
    ("skinfeat.cli", "skinfeat.progress"): "bars: shows the library's long loops as tqdm bars",
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def skinfeat_imports(path: Path, source: str | None = None) -> set[str]:
    """Every skinfeat module ``path`` (or ``source`` as if it were there) imports, relative
    imports resolved, at any depth: the commands import lazily, inside the functions."""
    package = module_name(path).split(".")[:-1]
    found = set()
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {n for n in found if n.split(".")[0] == "skinfeat"}


def allowed(me: str, target: str) -> bool:
    return target == "skinfeat.api" or target.startswith("skinfeat.commands") \
        or (me, target) in ALLOWED


def test_commands_call_the_public_api_only():
    direct = [f"{module_name(p)} imports {t}" for p in COMMANDS
              for t in sorted(skinfeat_imports(p)) if not allowed(module_name(p), t)]
    assert not direct, ("command modules must call skinfeat.api (add the function there):\n"
                        + "\n".join(direct))


def test_every_stage_command_reaches_the_api():
    """Not vacuous: each module that defines a command imports skinfeat.api."""
    for p in COMMANDS:
        if "@click.command" in p.read_text() or "@main.command" in p.read_text():
            assert "skinfeat.api" in skinfeat_imports(p), f"{module_name(p)} never calls the API"


def test_the_exceptions_are_still_needed():
    """A listed exception that no module needs any more is dropped from the list."""
    used = {(module_name(p), t) for p in COMMANDS for t in skinfeat_imports(p)}
    assert set(ALLOWED) <= used, f"stale exceptions: {sorted(set(ALLOWED) - used)}"


def test_the_check_catches_a_direct_import():
    """The walker sees a lazy import inside a function (the way commands import)."""
    where = PACKAGE / "commands" / "probe.py"   # never written: the source is given
    found = skinfeat_imports(where, "def f():\n    from ..workflows.fit import fit_run\n"
                                    "    from ..api import fit\n    import skinfeat.learn.cv\n")
    assert found == {"skinfeat.workflows.fit", "skinfeat.api", "skinfeat.learn.cv"}
    assert [t for t in sorted(found) if not allowed(module_name(where), t)] == [
        "skinfeat.learn.cv", "skinfeat.workflows.fit"]


def test_the_api_the_commands_call_is_exported_and_documented():
    """``import skinfeat`` lists what ``skinfeat.api`` exports, each with a docstring."""
    import inspect

    import skinfeat
    from skinfeat import api

    assert set(skinfeat.__all__) - {"__version__"} == set(api.__all__)
    # a name that is also a subpackage or module would be shadowed by it once that is imported
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} | \
        {p.stem for p in PACKAGE.glob("*.py")}
    assert not set(api.__all__) & subpackages, sorted(set(api.__all__) & subpackages)
    called = set()
    for p in COMMANDS:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "api":
                called.update(a.name for a in node.names)
    assert called <= set(api.__all__) | {"ExplainError", "HeadConfig", "LGBMConfig"}, \
        sorted(called - set(api.__all__))
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"skinfeat.{name} has no docstring"
