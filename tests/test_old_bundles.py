"""Bundles written by the previous release still load and predict identically.

The previous release is commit ``PREVIOUS`` of this repository: its package is unpacked with
``git archive`` and run in a subprocess that writes a fusion-head run, a LightGBM run and a fold
ensemble (``cv --save-models``) from a foreign cache, and their probabilities on a held-out
table. Today's code loads the same folders and must give the same probabilities. Skipped where
the checkout has no git history holding that commit (e.g. a source archive)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_byo import write_foreign_cache

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS = "35b3281"   # the release before typed schemas, one training loop and workflows/

WRITE = r"""
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from click.testing import CliRunner
from skinfeat.cli import main
from skinfeat.deploy.predict import Predictor

data, cache, out = (Path(a) for a in sys.argv[1:4])
def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
run("fit-head", "--data", data / "train", "--cache", cache, "--out", out / "head",
    "--epochs", "4", "--seed", "1")
run("fit-head", "--data", data / "train", "--cache", cache, "--out", out / "lgbm",
    "--model", "lgbm", "--lgbm-n-estimators", "20")
run("cv", "--data", data / "train", "--cache", cache, "--out", out / "cv", "--folds", "3",
    "--epochs", "3", "--inputs", "fused", "--models", "head", "--jobs", "1", "--save-models")
rows = pd.read_csv(data / "held.csv", dtype=object)
proba = {}
for name in ("head", "lgbm", "cv/models/head_fused"):
    p = Predictor(out / name).predict_table(rows, cache=[str(cache)])
    proba[name] = p.proba.tolist()
(out / "proba.json").write_text(json.dumps(proba))
import skinfeat
print(skinfeat.__file__)
"""


def previous_package(dest: Path) -> Path | None:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "skinfeat"],
                                 capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if archive.returncode:
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


@pytest.mark.slow
def test_previous_release_bundles_predict_identically(synth_dir, synth_table, tmp_path):
    (tmp_path / "previous").mkdir()
    old = previous_package(tmp_path / "previous")
    if old is None:
        pytest.skip(f"commit {PREVIOUS} is not in this checkout's git history")
    table = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    lesions = sorted(table["lesion_id"].unique())
    held = table["lesion_id"].isin(lesions[::5])
    (tmp_path / "data" / "train").mkdir(parents=True)
    table[~held].to_csv(tmp_path / "data" / "train" / "HAM10000_metadata.csv", index=False)
    rows = table[held][["image_id", "age", "sex", "localization"]].copy()
    rows["age"] = rows["age"].where(np.arange(len(rows)) % 3 != 0, "")   # some ages missing
    rows.assign(path=rows["image_id"]).to_csv(tmp_path / "data" / "held.csv", index=False)
    labels = synth_table.set_index("image_id").loc[table["image_id"], "label"].to_numpy()
    write_foreign_cache(tmp_path / "foreign.h5", table["image_id"], labels)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(old), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / "data"),
                           str(tmp_path / "foreign.h5"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(old)), done.stdout   # the old package ran
    before = json.loads((out / "proba.json").read_text())

    from skinfeat.deploy.model import Model

    held_rows = pd.read_csv(tmp_path / "data" / "held.csv", dtype=object)
    for name, proba in before.items():
        now = Model(out / name).predict_table(held_rows, cache=[str(tmp_path / "foreign.h5")])
        np.testing.assert_allclose(now.proba, np.array(proba), rtol=0, atol=1e-6, err_msg=name)
