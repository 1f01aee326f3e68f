"""Embeddings from anywhere, models you can ship: an external cache written by a plain h5py script
trains, cross-validates, evaluates and predicts with no image file present; two caches fuse and
raw-image predict on the fused model equals the cached path; the fold ensemble and the
``--split none`` model predict; ``--config`` reproduces a run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY

from skinfeat.cli import main
from skinfeat.deploy.model import Model
from skinfeat.embed.extract import extract
from skinfeat.embed.weights import WeightSource

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def cli(*args, ok: bool = True):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (r.exit_code == 0) == ok, r.output
    return r


def write_foreign_cache(path: Path, ids, labels, dim: int = 24, seed: int = 0) -> None:
    """What a user's own script (another foundation model, another machine) would write."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(7, dim))
    emb = centres[labels] + rng.normal(scale=0.8, size=(len(ids), dim))
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=np.asarray(ids, dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=emb.astype(np.float32))


@pytest.fixture(scope="module")
def foreign(synth_dir, synth_table, tmp_path_factory):
    """Two tables without images (training set, and a held-out set of other lesions), and a
    foreign cache of both that misses three training images."""
    root = tmp_path_factory.mktemp("byo")
    table = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    lesions = sorted(table["lesion_id"].unique())
    held = table["lesion_id"].isin(lesions[::5])
    for name, part in (("train", table[~held]), ("held", table[held])):
        (root / name).mkdir()
        part.to_csv(root / name / "HAM10000_metadata.csv", index=False)
    labels = synth_table.set_index("image_id").loc[table["image_id"], "label"].to_numpy()
    keep = np.ones(len(table), bool)
    keep[np.flatnonzero(~held.to_numpy())[:3]] = False            # three rows lack one
    write_foreign_cache(root / "foreign.h5", table["image_id"][keep], labels[keep])
    assert not list(root.rglob("*.jpg"))                            # no image anywhere
    return {"root": root, "train": root / "train", "held": root / "held",
            "cache": root / "foreign.h5", "n_held": int(held.sum())}


def test_foreign_cache_end_to_end_without_images(foreign, tmp_path, caplog):
    data, cache = foreign["train"], foreign["cache"]
    run = tmp_path / "run"
    cli("fit-head", "--data", data, "--cache", cache, "--out", run, "--epochs", "5", "--seed", "1")
    info = json.loads((run / "metrics.json").read_text())["info"]
    assert info["without_embedding"] == 3 and info["embed_dim"] == 24
    assert "3 image(s) of the table had no embedding" in (run / "report.md").read_text()
    cli("cv", "--data", data, "--cache", cache, "--out", tmp_path / "cv", "--folds", "3",
        "--epochs", "3", "--inputs", "fused", "--jobs", "1")
    ev = tmp_path / "ev"
    cli("evaluate", "--model", run, "--data", foreign["held"], "--cache", cache, "--out", ev)
    evm = json.loads((ev / "evaluate_metrics.json").read_text())
    assert evm["info"]["n"] == foreign["n_held"] and evm["info"]["cache"] == [str(cache)]
    table = pd.read_csv(foreign["held"] / "HAM10000_metadata.csv")[["image_id", "age", "sex"]]
    table.to_csv(tmp_path / "rows.csv", index=False)
    cli("predict", "--model", run, "--csv", tmp_path / "rows.csv", "--cache", cache,
        "--output", tmp_path / "preds.csv")
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == len(table) and preds["error"].isna().all()
    assert np.allclose(preds.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    # Raw images cannot go through a model whose encoder skinfeat does not know: say what helps.
    image = tmp_path / "a.png"
    shutil.copy(next(Path(__file__).parent.parent.glob("docs/*.png")), image)
    r = cli("predict", "--model", run, "--image", image, ok=False)
    assert "--cache" in r.output and "24-d" in r.output and "Traceback" not in r.output


def test_no_common_ids_is_a_one_line_error(foreign, tmp_path):
    path = tmp_path / "other.h5"
    write_foreign_cache(path, ["x1", "x2", "x3"], np.array([0, 1, 2]))
    r = cli("fit-head", "--data", foreign["train"], "--cache", path, "--out", tmp_path / "r",
            ok=False)
    assert "none of the" in r.output and "Traceback" not in r.output


def test_fold_ensemble_and_split_none_models_predict(foreign, tmp_path):
    data, cache = foreign["train"], foreign["cache"]
    cv = tmp_path / "cv"
    r = cli("cv", "--data", data, "--cache", cache, "--out", cv, "--folds", "3", "--epochs", "3",
            "--inputs", "fused", "--models", "head,lgbm", "--jobs", "1", "--save-models")
    assert "fold ensemble" in r.output
    ens = cv / "models" / "head_fused"
    assert sorted(p.name for p in ens.iterdir() if p.is_dir()) == \
        [f"seed42_fold{k}" for k in range(3)]
    held = pd.read_csv(foreign["held"] / "HAM10000_metadata.csv")
    p = Model(ens)
    image, errors = p.cached(held["image_id"].tolist(), [cache])
    proba = p.calibrate(p.logits(image, held))
    members = np.mean([m.calibrate(m.logits(image, held)) for m in p.members], axis=0)
    np.testing.assert_allclose(proba, members, atol=1e-9)     # the mean of calibrated members
    assert len(p.members) == 3 and not any(errors)
    offsets = np.mean([m.calibrator.decision_offset for m in p.members], axis=0)
    np.testing.assert_allclose(p.decide(proba), (np.log(proba) + offsets).argmax(1))
    for model in ("head_fused", "lgbm_fused"):
        ev = tmp_path / f"ev-{model}"
        cli("evaluate", "--model", cv / "models" / model, "--data", foreign["held"], "--cache",
            cache, "--out", ev)
        m = json.loads((ev / "evaluate_metrics.json").read_text())
        assert m["info"]["n"] == foreign["n_held"] and 0 <= m["model"]["accuracy"] <= 1
    # The model to deploy: every row trains but a grouped validation part; epochs fixed.
    final = tmp_path / "final"
    cli("fit-head", "--data", data, "--cache", cache, "--out", final, "--split", "none",
        "--epochs", "4")
    splits = pd.read_csv(final / "splits.csv")
    assert set(splits["split"]) == {"train", "val"}
    lesions = splits.groupby("group_id")["split"].nunique()
    assert lesions.max() == 1                                  # grouped like every split
    config = json.loads((final / "config.json").read_text())
    assert config["best_epoch"] == 4 and config["run"]["split"] == "none"
    assert "optimistic" in (final / "report.md").read_text()
    one = held["image_id"].iloc[0]
    res = json.loads(cli("predict", "--model", final, "--image", f"{one}.jpg", "--cache", cache,
                         "--meta", "age=50", "--json").output)
    assert res["prediction"] in config["classes"]


def test_two_caches_fuse_and_raw_images_equal_the_cached_path(synth_dir, synth_table,
                                                              synth_cache, tmp_path):
    other = tmp_path / "vit.h5"
    extract(synth_table, other, backbone="test_vit", weights=WeightSource("random", seed=3),
            precision="fp32", num_workers=0)
    run = tmp_path / "fused"
    r = cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--cache", other, "--out",
            run, "--epochs", "3")
    assert "report:" in r.output
    config = json.loads((run / "config.json").read_text())
    ident = config["backbone"]
    assert [i["backbone"] for i in ident["fused"]] == [TINY, "test_vit"]
    assert ident["sources"] == [str(synth_cache), str(other)]
    assert config["head"]["embed_dim"] == sum(ident["dims"])
    assert "2 caches fused per image" in (run / "report.md").read_text()
    p = Model(run, device="cpu")
    rows = synth_table.iloc[:6]
    raw, errors = p.embed(rows["path"].tolist())
    cached, _ = p.cached(rows["image_id"].tolist(), [synth_cache, other])
    assert not any(errors)
    np.testing.assert_allclose(raw, cached, atol=1e-5)
    a = p.predict_table(rows)
    b = p.predict_table(rows, cache=[synth_cache, other])
    np.testing.assert_allclose(a.proba, b.proba, atol=1e-5)
    assert list(a.decided) == list(b.decided)


def test_config_file_reproduces_a_run_and_flags_win(synth_dir, synth_cache, tmp_path):
    first = tmp_path / "a"
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", first, "--model", "head",
        "--lr", "0.003",
        "--dense-width", "16", "--meta-width", "8", "--meta-out", "4", "--max-epochs", "6",
        "--image-dropout", "0.1", "--weight-decay", "0.001", "--lgbm-num-leaves", "7")
    run = json.loads((first / "config.json").read_text())["run"]
    assert run["head"]["lr"] == 0.003 and run["head"]["dense_width"] == 16
    assert "lgbm" not in run   # one model config: a LightGBM flag does not apply to the head
    again = tmp_path / "b"
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", again, "--config",
        first / "config.json")
    assert json.loads((again / "config.json").read_text())["run"] == run
    assert (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    toml = tmp_path / "recipe.toml"
    toml.write_text('model = "head"\nseed = 3\n[head]\nlr = 0.002\nepochs = 2\n')
    third = tmp_path / "c"
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", third, "--config", toml,
        "--dense-width", "24")
    run3 = json.loads((third / "config.json").read_text())["run"]
    assert (run3["seed"], run3["head"]["lr"], run3["head"]["epochs"],
            run3["head"]["dense_width"]) == (3, 0.002, 2, 24)
    bad = tmp_path / "bad.toml"
    bad.write_text("[head]\nlearning_rate = 0.1\n")
    r = cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "d",
            "--config", bad, ok=False)
    assert "unknown key(s) learning_rate" in r.output and "Traceback" not in r.output
