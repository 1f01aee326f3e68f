"""Packaging: every import is declared, the Makefile installs what pyproject.toml declares (and
torch from TORCH_INDEX when given), and the built wheel installs and runs in a fresh venv."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Import names whose distribution is not installed here (an extra left out), by hand.
KNOWN = {"PIL": "pillow", "sklearn": "scikit-learn", "pytorch_grad_cam": "grad-cam",
         "open_clip": "open-clip-torch", "faiss": "faiss-cpu", "imagehash": "imagehash",
         "yaml": "pyyaml", "cv2": "opencv-python"}


IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(reqs) -> set[str]:
    return {norm(re.match(r"[A-Za-z0-9_.\-]+", r).group()) for r in reqs}


def imports(folder: Path) -> dict[str, str]:
    """Top-level third-party module imported anywhere under ``folder`` -> one file importing it.
    An import in an ``except ImportError`` handler is a fallback, not a requirement."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fallbacks = {id(n) for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)
                     and any(isinstance(t, ast.Name) and t.id in IMPORT_ERRORS
                             for t in ast.walk(h.type or ast.Name("")))
                     for n in ast.walk(h)}
        for node in ast.walk(tree):
            if id(node) in fallbacks:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                # _typeshed: the standard library's stubs, imported under TYPE_CHECKING only
                if top not in sys.stdlib_module_names and top not in ("skinfeat", "conftest",
                                                                      "_typeshed"):
                    found.setdefault(top, str(path.relative_to(folder.parent)))
    return found


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> set[str]:
    installed = installed_distributions().get(module)
    return {norm(d) for d in installed} if installed else {norm(KNOWN.get(module, module))}


def undeclared(folder: Path, declared: set[str]) -> list[str]:
    local = {p.stem for p in folder.glob("*.py")}          # tests import their own helpers
    return [f"{module} ({where})" for module, where in imports(folder).items()
            if module not in local and not distribution(module) & declared]


DECLARED = requirement_names(PROJECT["dependencies"]).union(
    *(requirement_names(reqs) for reqs in PROJECT["optional-dependencies"].values()))


@pytest.mark.parametrize("folder", ["skinfeat", "tests"])   # benchmarks: optional rivals
def test_every_import_is_declared(folder):
    """A package the code imports but pyproject.toml does not name (core or an extra) arrives
    only through another package, and may not arrive at all."""
    assert undeclared(ROOT / folder, DECLARED) == []


def test_an_undeclared_import_is_caught(tmp_path):
    (tmp_path / "mod.py").write_text(
        "import numpy\nfrom scipy.stats import norm\nimport json\n"
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n")
    assert undeclared(tmp_path, {"numpy"}) == [f"scipy ({tmp_path.name}/mod.py)"]


def make_dry_run(*args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "pip install" in line]


def test_make_test_installs_every_extra(tmp_path):
    """CI (make test) covers every feature: the install names every extra of pyproject.toml."""
    (line,) = [x for x in make_dry_run("test", f"VENV={tmp_path / 'v'}") if " -e " in x]
    extras = re.search(r'-e "\.\[([^\]]*)\]"', line).group(1).split(",")
    assert set(extras) == set(PROJECT["optional-dependencies"])


def test_torch_index_reaches_pip_before_the_package(tmp_path):
    url = "https://download.example.org/whl/cpu"
    lines = make_dry_run("demo", f"TORCH_INDEX={url}", f"VENV={tmp_path / 'v'}")
    torch_line = [i for i, x in enumerate(lines) if f"--index-url {url}" in x]
    package_line = [i for i, x in enumerate(lines) if " -e " in x]
    assert len(torch_line) == 1 and package_line and torch_line[0] < package_line[0]
    assert re.search(r"\btorch torchvision\b", lines[torch_line[0]])
    default = make_dry_run("demo", f"VENV={tmp_path / 'v'}")
    assert not any("--index-url" in x for x in default)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """``python -m build`` makes a wheel holding LICENSE and py.typed; installed (without its
    dependencies: the fresh venv sees this interpreter's site-packages for those) into a fresh
    venv, ``import skinfeat`` and ``skinfeat --help`` work from the wheel, not from this tree."""
    pytest.importorskip("build")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "skinfeat", src / "skinfeat",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                    "--outdir", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("skinfeat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "skinfeat/py.typed" in names and "skinfeat/static/index.html" in names
    assert any(re.search(r"\.dist-info/(licenses/)?LICENSE$", n) for n in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: scipy" in metadata and "License-Expression: Apache-2.0" in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    import sysconfig
    # the dependencies: this interpreter's site-packages, after the venv's own
    Path(site, "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    run = dict(check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    where = subprocess.run([py, "-c", "import skinfeat, pathlib; "
                            "print(pathlib.Path(skinfeat.__file__).parent)"], **run).stdout
    assert Path(where.strip()).is_relative_to(venv)
    assert (Path(where.strip()) / "py.typed").is_file()
    help_text = subprocess.run([venv / "bin" / "skinfeat", "--help"], **run).stdout
    assert "extract" in help_text and "Usage" in help_text
