"""The examples in README.md and docs/ run, so they cannot drift from the code.

Marker convention: an HTML comment on the line before a fenced block (invisible on GitHub and on
the site; an info string such as ```python exec would break the site's fences):

- ``<!-- exec -->``: this collector runs the block. Per page, in page order, in one empty
  folder: ``python`` blocks share one namespace, ``bash`` blocks run with ``skinfeat`` meaning
  this tree's CLI, ``toml`` blocks are read as a spec file (a ``[dataset]`` table) or a recipe.
- ``<!-- tested-by: tests/test_x.py -->``: a test with fixtures runs it (that file names the page).

Every ``python`` and ``toml`` block carries one of the two; shell blocks without a marker are
illustrations (real data, GPUs, the network). Runnable blocks use synthetic data or timm's tiny
``test_convnext``, offline.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:     # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(exec|tested-by:\s*(\S+))\s*-->\s*\Z")


def blocks(page: Path) -> list[tuple[str, str, str | None, int]]:
    """(language, code, marker, line) of every fenced block; marker is 'exec', a test file or
    None."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        mark = MARKER.search(text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1])
        kind = None if mark is None else (mark.group(2) or "exec")
        found.append((m.group(1), m.group(2), kind, text.count("\n", 0, m.start()) + 1))
    return found


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if any(kind == "exec" for _, _, kind, _ in blocks(p))]


def test_every_python_and_toml_block_is_run_by_a_test():
    unmarked, unknown = [], []
    for page in PAGES:
        for lang, _, kind, line in blocks(page):
            if lang in ("python", "toml") and kind is None:
                unmarked.append(f"{name(page)}:{line}")
            elif kind not in (None, "exec"):
                test = ROOT / kind
                if not test.is_file() or page.name not in test.read_text(encoding="utf-8"):
                    unknown.append(f"{name(page)}:{line} -> {kind}")
    assert not unmarked, (f"python/toml blocks without <!-- exec --> or <!-- tested-by -->: "
                          f"{unmarked}")
    assert not unknown, f"tested-by names a test file that does not read the page: {unknown}"
    assert RUNNABLE, "no runnable example found: is the marker convention still in use?"


@pytest.fixture
def cli_on_path(tmp_path, monkeypatch):
    """`skinfeat` in bash blocks is this tree's CLI under this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "skinfeat"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m skinfeat.cli "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_toml(code: str, where: Path) -> None:
    parsed = tomllib.loads(code)
    path = where / ("spec.toml" if "dataset" in parsed else "recipe.toml")
    path.write_text(code, encoding="utf-8")
    if "dataset" in parsed:
        from skinfeat.data.spec import load_spec
        load_spec(path)
    else:
        import skinfeat
        skinfeat.make_recipe(path)


def end_to_end(page: Path) -> bool:
    """A page whose runnable blocks run the pipeline (a shell session, or stage one from
    Python) is an end-to-end test: slow."""
    return any(kind == "exec" and (lang in ("bash", "sh", "shell") or "extract(" in code)
               for lang, code, kind, _ in blocks(page))


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if end_to_end(p) else p
                                  for p in RUNNABLE], ids=name)
def test_runnable_examples(page, tmp_path, monkeypatch, cli_on_path):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    scope: dict = {"__name__": "__docs__"}
    for lang, code, kind, line in blocks(page):
        if kind != "exec":
            continue
        where = f"{name(page)}:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), scope)
        elif lang in ("bash", "sh", "shell"):
            done = subprocess.run(["bash", "-e", "-c", code], cwd=work, capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, (f"{where} failed:\n{done.stdout[-3000:]}\n"
                                          f"{done.stderr[-3000:]}")
        elif lang == "toml":
            run_toml(code, work)
        else:
            pytest.fail(f"{where}: no runner for a {lang or 'plain'} block marked exec")


def _model_paths(text: str) -> tuple[set[str], set[str]]:
    made = set(re.findall(r"--out (runs/[\w./-]+)", text)) | {"runs/demo"}   # make demo's
    used = set(re.findall(r"--model (runs/[\w./-]+)", text))
    return made, used


def _missing(made: set[str], used: set[str]) -> set[str]:
    return {u for u in used if not any(u == m or u.startswith(m + "/") for m in made)}


def test_every_model_an_example_uses_is_made_by_an_example():
    """A `--model runs/X` refers to a run some `--out runs/X` makes (a fold ensemble lies below
    its cv run): a table of recipes (one that makes runs) uses only runs made in it or above it
    on its page, and every example uses only runs made somewhere in the docs."""
    everything = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for table in re.finditer(r"(?:^\|.*\n)+", text, re.M):
            if len(_model_paths(table.group())[0]) > 1:
                made, used = _model_paths(text[:table.end()])[0], _model_paths(table.group())[1]
                assert not _missing(made, used), (f"{name(page)}: a table uses "
                                                  f"{_missing(made, used)}")
    assert not _missing(*_model_paths(everything)), _missing(*_model_paths(everything))


NOTEBOOKS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))


def test_the_site_shows_the_notebooks_outputs():
    nbformat = pytest.importorskip("nbformat")

    assert NOTEBOOKS
    for path in NOTEBOOKS:
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert cells and all(c.get("outputs") for c in cells), \
            f"{path.name}: store it executed (the site renders the stored outputs)"


# A cell run after a notebook's own (not stored in it) printing "name value" lines, and the least
# each value must reach: the tutorial's head learns, it does not sit at chance (1/7 on 7 classes:
# with the head's defaults on ~150 rows a fold, its image-only CV score was 0.151).
LEARNS = {"first-model.ipynb": (
    "_row = cv.table.set_index(['model', 'inputs']).loc[('head', 'image')]\n"
    "print('cv_head_image', _row['balanced_accuracy_mean'])\n"
    "print('fit_over_majority', fit.metrics['balanced_accuracy'] - "
    "fit.baseline['balanced_accuracy'])",
    {"cv_head_image": 0.3, "fit_over_majority": 0.2})}


@pytest.mark.slow   # an end-to-end run: about a minute
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_notebook_runs_end_to_end(path, tmp_path, cli_on_path):
    # cli_on_path: the kernel inherits PYTHONPATH, so it imports this tree
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")      # the notebook's kernel (the docs and test extras)

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []       # run it fresh, not the stored outputs
    probe, least = LEARNS.get(path.name, ("", {}))
    if probe:
        notebook.cells.append(nbformat.v4.new_code_cell(probe))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()     # raises CellExecutionError naming the cell on the first failure
    assert all(c.outputs for c in notebook.cells if c.cell_type == "code")
    if probe:
        text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
        got = {k: float(v) for k, v in (line.split() for line in text.splitlines())}
        assert all(got[k] >= v for k, v in least.items()), f"{path.name}: {got}, least {least}"


def test_the_readme_is_a_front_page():
    """Under 200 lines, says what it is not, and reaches an offline stage one early."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200
    assert any("not a medical device" in line.lower() for line in lines)
    assert any("--backbone local-dir:" in line for line in lines[:60])
    for link in re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines)):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
