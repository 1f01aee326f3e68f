"""Shared fixtures: small synthetic HAM10000-layout data and a test_convnext cache, built once."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network: the hub is told to stay offline before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
# Quantized (int8) models go to a throw-away store, never the user's ~/.cache/skinfeat.
os.environ["SKINFEAT_HOME"] = tempfile.mkdtemp(prefix="skinfeat-test-home-")

TINY = "test_convnext"   # timm's tiny ConvNeXt: 64-d, a few ms per image, random weights
# extract's flags for a fast, offline, deterministic stage one in tests
EXTRACT_TINY = ("--backbone", TINY, "--weights", "random", "--precision", "fp32", "--workers", "0")


def run_cli(*args, ok: bool = True):
    """``skinfeat ARGS`` in-process; with ``ok``, asserts exit code 0 (showing the output)."""
    from click.testing import CliRunner

    from skinfeat.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r
SAMPLE = Path(os.environ.get("SKINFEAT_SAMPLE",
                             Path(__file__).resolve().parents[2] / "shared/data/ham10000-sample"))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from skinfeat.data.synthetic import make_synthetic_ham
    return make_synthetic_ham(tmp_path_factory.mktemp("synth"), n_images=160, seed=1)


@pytest.fixture(scope="session")
def synth_table(synth_dir):
    from skinfeat.data.datasets import load_dataset
    return load_dataset(synth_dir, "ham10000").table


@pytest.fixture(scope="session")
def synth_cache(synth_dir, synth_table, tmp_path_factory) -> Path:
    from skinfeat.embed.extract import extract
    from skinfeat.embed.weights import WeightSource
    path = tmp_path_factory.mktemp("cache") / "synth.h5"
    # --layers last, one view: a cache of the defaults before issue 29 (as users' existing
    # caches are), so every test on it checks that such caches keep working;
    # test_stage_one_options covers last3 and the views average, test_export and test_explain
    # models on the default extraction
    extract(synth_table, path, backbone=TINY, weights=WeightSource("random"), precision="fp32",
            num_workers=0, layers="last", average_views=())
    return path


@pytest.fixture(scope="session")
def ship_runs(synth_table, synth_cache, tmp_path_factory) -> dict:
    """A fusion-head run and a LightGBM run on the synthetic cache (predict, explain, export,
    serve); tests copy a run before changing it."""
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run
    root = tmp_path_factory.mktemp("ship_runs")
    for model in ("head", "lgbm"):
        fit_run(synth_table, synth_cache, root / model,
                RunConfig(seed=0, model=model,
                          params=HeadConfig(seed=0, max_epochs=8) if model == "head" else None))
    return {"head": root / "head", "lgbm": root / "lgbm"}
