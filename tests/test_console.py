"""The console: bars with a total (an ETA) on tune and compare, a warning about the same cause
printed once per command with its count, errors on a line of their own after the bar is closed,
no raw Python warning from export, and demo's help true about int8."""
from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings

import pytest
import tqdm.auto
from click.testing import CliRunner
from conftest import EXTRACT_TINY, TINY, run_cli

from skinfeat.cli import main


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar a command opens, drawn (a terminal would show them) to the
    command's standard error, and recorded."""
    made = []
    real = tqdm.auto.tqdm

    class Drawn(real):
        def __init__(self, *args, **kwargs):
            kwargs.update(disable=False, file=sys.stderr, mininterval=0)
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Drawn)
    return made


def test_an_error_starts_on_its_own_line_after_the_bar(bars, synth_dir, tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not an HDF5 file")   # refused inside extract
    r = CliRunner().invoke(main, ["extract", "--data", str(synth_dir), *EXTRACT_TINY,
                                  "--cache", str(tmp_path / "x.h5")])
    assert r.exit_code == 1 and bars, r.output
    assert "\nError: " in r.output and "]Error" not in r.output, r.output
    assert all(b.disable or b.n is not None for b in bars)


def test_compare_bar_has_a_total_that_it_reaches(bars, synth_dir, synth_cache, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(synth_cache, other)
    run_cli("compare", "--data", synth_dir, "--cache", synth_cache, "--cache", other,
            "--models", "head", "--max-epochs", "1", "--folds", "2", "--n-boot", "50",
            "--jobs", "1", "--out", tmp_path / "cmp", "--subgroups", "none")
    bar = next(b for b in bars if b.desc.startswith("compare"))
    assert bar.total == 2 * 2 and bar.n == bar.total      # 2 caches x 2 folds x 1 model


def test_tune_bar_has_the_trials_as_its_total(bars, synth_dir, synth_cache, tmp_path):
    pytest.importorskip("optuna")
    run_cli("tune", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "t",
            "--trials", "2", "--folds", "2", "--jobs", "1", "--max-epochs", "1")
    bar = next(b for b in bars if b.desc.startswith("tune"))
    assert bar.total == 2 and bar.n == 2


def test_a_repeated_warning_prints_once_with_its_count(synth_dir, synth_cache, tmp_path,
                                                      monkeypatch):
    # As on a terminal: no log handler but the command's own (pytest's capture removed).
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    r = CliRunner().invoke(main, ["cv", "--data", str(synth_dir), "--cache", str(synth_cache),
                                  "--out", str(tmp_path / "cv"), "--folds", "3", "--epochs", "1",
                                  "--models", "head", "--inputs", "fused", "--jobs", "1",
                                  "--subgroups", "none"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "never seen in training" in ln]
    assert len(lines) == 2, r.output   # the first warning, then the summary with its count
    assert lines[0].startswith("WARNING skinfeat.data.metadata: metadata:")
    count = int(lines[1].split("WARNING: ")[1].split()[0])
    assert count >= 2 and "(shown once)" in lines[1]


def test_demo_help_does_not_promise_int8():
    text = CliRunner().invoke(main, ["demo", "--help"]).output.replace("\n", " ")
    assert "else int8" not in " ".join(text.split())
    from skinfeat.demo import demo_precision
    assert demo_precision("auto")[0] == "auto"   # extract's own auto: a GPU, bf16, else fp32


@pytest.fixture(scope="module")
def bf16_run(synth_table, tmp_path_factory):
    from skinfeat.embed.extract import extract
    from skinfeat.embed.weights import WeightSource
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run
    root = tmp_path_factory.mktemp("bf16")
    extract(synth_table, root / "c.h5", backbone=TINY, weights=WeightSource("random"),
            precision="bf16", device="cpu", num_workers=0)
    fit_run(synth_table, root / "c.h5", root / "run",
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=2)))
    return root / "run"


def test_export_of_a_bf16_model_states_its_tolerance_without_a_python_warning(bf16_run,
                                                                             tmp_path):
    pytest.importorskip("onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("export", "--model", bf16_run, "--onnx", tmp_path / "m.onnx")
    assert not [w for w in caught if "skinfeat" in str(w.filename)], \
        [str(w.message) for w in caught]
    side = json.loads((tmp_path / "m.json").read_text())
    assert "bf16" in side["agreement"] and "not 1e-4" in side["agreement"]
