"""What the user sees is true, stage two and caches (issue 27): each case that gave a silently
wrong result (or a traceback) now refuses in one line, or does what it says and counts it.
Every test here fails on the code before the fix (7c926aa)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import EXTRACT_TINY, run_cli
from hostile import ok, refused

DIM = 16
HEAD = ("--models", "head", "--max-epochs", "2", "--folds", "3", "--jobs", "1")


def write_cache(path: Path, ids, signal: float = 1.0, seed: int = 0, labels=None) -> Path:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(ids), DIM))
    if labels is not None:
        emb[np.arange(len(ids)), np.asarray(labels) % DIM] += signal
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=np.asarray(ids, dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=emb.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def cache(synth_table, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("truthful")
    return write_cache(root / "c.h5", synth_table["image_id"], 3.0, 0, synth_table["label"])


def test_compare_keeps_every_cache_when_file_names_collide(synth_dir, synth_table, tmp_path):
    ids, y = synth_table["image_id"], synth_table["label"]
    files = [write_cache(tmp_path / "x.h5", ids, 0.1, 1, y),
             write_cache(tmp_path / "d" / "x.h5", ids, 4.0, 2, y),
             write_cache(tmp_path / "2_x.h5", ids, 1.0, 3, y)]
    out = tmp_path / "cmp"
    ok("compare", "--data", synth_dir, *[a for f in files for a in ("--cache", f)], *HEAD,
       "--n-boot", "50", "--out", out)
    res = json.loads((out / "compare.json").read_text())
    assert sorted(res["caches"].values()) == sorted(map(str, files))
    assert len(res["entries"]) == 3 and len({e["cache"] for e in res["entries"]}) == 3
    for label, where in res["runs"].items():   # each entry's run is on its own file
        assert Path(where).name == label
        metrics = json.loads((Path(where) / "cv_metrics.json").read_text())
        assert res["caches"][label] in json.dumps(metrics)


def test_compare_refuses_one_file_twice_and_no_bootstrap(synth_dir, cache, tmp_path):
    refused(["compare", "--data", synth_dir, "--cache", cache, "--cache", cache, *HEAD,
             "--out", tmp_path / "a"], "--cache", "c.h5", "once")
    for n in ("0", "-5"):
        refused(["compare", "--data", synth_dir, "--cache", cache, "--models", "head,lgbm",
                 "--out", tmp_path / f"b{n}", "--n-boot", n], f"--n-boot {n}")
        assert not (tmp_path / f"b{n}").exists()


def test_cv_refuses_a_repeated_seed(synth_dir, cache, tmp_path):
    refused(["cv", "--data", synth_dir, "--cache", cache, *HEAD, "--seeds", "1,1",
             "--out", tmp_path / "cv"], "--seeds 1,1", "seed(s) 1")
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("flag", ["--numeric", "--categorical"])
def test_a_named_field_absent_from_the_table_is_refused(synth_dir, cache, tmp_path, flag):
    refused(["fit-head", "--data", synth_dir, "--cache", cache, "--out", tmp_path / "r",
             flag, "agee", "--epochs", "1"], "agee", "columns:", "age")
    assert not (tmp_path / "r").exists()


def test_cache_merge_refuses_an_existing_out_unless_overwrite(synth_table, cache, tmp_path):
    ids = synth_table["image_id"].tolist()
    a = write_cache(tmp_path / "a.h5", ids[:50], seed=4)
    b = write_cache(tmp_path / "b.h5", ids[50:], seed=4)
    other = shutil.copy(cache, tmp_path / "other_encoder.h5")
    refused(["cache", "merge", a, b, "--out", other], "other_encoder.h5", "--overwrite",
            protect=[other])
    ok("cache", "merge", a, b, "--out", other, "--overwrite")
    with h5py.File(other) as f:
        assert len(f["image_id"]) == len(ids)


def test_a_zero_row_cache_is_refused_naming_the_file(synth_dir, tmp_path):
    empty = write_cache(tmp_path / "empty.h5", [])
    refused(["cache", "info", empty], "empty.h5", "no rows")
    refused(["fit-head", "--data", synth_dir, "--cache", empty, "--out", tmp_path / "r"],
            "empty.h5", "no rows")


# ------------------------------------------------------------- --split by: and crossing groups
@pytest.fixture(scope="module")
def sources(synth_dir, tmp_path_factory):
    """The synthetic HAM10000 table with a dataset column, 3 lesions in two sources."""
    root = tmp_path_factory.mktemp("sources")
    t = pd.read_csv(synth_dir / "HAM10000_metadata.csv")
    lesions = t["lesion_id"].drop_duplicates().tolist()
    source = {les: ("a", "b", "c")[i % 3] for i, les in enumerate(lesions)}
    t["dataset"] = t["lesion_id"].map(source)
    many = t["lesion_id"].value_counts()
    crossing = many.index[many >= 2][:3].tolist()
    for les in crossing:   # the first image of each moves to the next source
        i = t.index[t["lesion_id"] == les][0]
        t.loc[i, "dataset"] = {"a": "b", "b": "c", "c": "a"}[t.loc[i, "dataset"]]
    t.to_csv(root / "meta.csv", index=False)
    n_images = int(t["lesion_id"].isin(crossing).sum())
    return root / "meta.csv", crossing, n_images


def by_dataset(meta, cache, out, *extra):
    return ["cv", "--data", meta, "--preset", "ham10000", "--cache", cache, "--split",
            "by:dataset", "--models", "head", "--max-epochs", "2", "--jobs", "1",
            "--inputs", "image", "--out", out, *extra]


def test_crossing_groups_refused_by_default_naming_the_flag(sources, cache, tmp_path):
    meta, crossing, n_images = sources
    refused(by_dataset(meta, cache, tmp_path / "r"), "3 group(s)", f"{n_images} images",
            "--crossing-groups")


@pytest.mark.parametrize("how", ["drop", "majority"])
def test_crossing_groups_drop_or_majority_runs_and_counts(sources, cache, tmp_path, how):
    meta, crossing, n_images = sources
    out = tmp_path / how
    r = ok(*by_dataset(meta, cache, out, "--crossing-groups", how))
    assert f"--crossing-groups {how}: 3 group(s) ({n_images} image(s))" in r.output
    listed = pd.read_csv(out / "crossing_groups.csv", dtype=str)
    assert sorted(listed["group_id"].unique()) == sorted(crossing)
    assert len(listed) == n_images and set(listed["action"]) == {how}
    folds = pd.read_csv(out / "cv_folds.csv", dtype=str)
    in_run = folds["group_id"].isin(crossing)
    fold = next(c for c in folds.columns if c.startswith("fold"))
    if how == "drop":
        assert not in_run.any() and len(folds) == 160 - n_images
    else:   # every group whole on one side: one fold per lesion
        assert in_run.sum() == n_images
        ids = folds.set_index("image_id")
        for les in crossing:
            mine = listed.loc[listed["group_id"] == les, "image_id"]
            assert ids.loc[mine, fold].nunique() == 1


# ------------------------------------------------------------------------- --group-context
@pytest.fixture(scope="module")
def context_run(tmp_path_factory):
    from skinfeat.data.synthetic import make_synthetic
    root = make_synthetic("isic2024", tmp_path_factory.mktemp("ctx"), n_images=120, seed=3)
    run_cli("extract", "--data", root, "--cache", root / "c.h5", *EXTRACT_TINY)
    run_cli("fit-head", "--data", root, "--cache", root / "c.h5", "--out", root / "run",
            "--group-context", "--epochs", "2")
    return root


@pytest.mark.slow   # end to end: stage one and a --group-context fit on the CLI
def test_group_context_refuses_an_all_blank_patient_column(context_run, tmp_path):
    raw = pd.read_csv(context_run / "train-metadata.csv").iloc[:12]
    raw["patient_id"] = ""
    raw.to_csv(tmp_path / "blank.csv", index=False)
    refused(["predict", "--model", context_run / "run", "--csv", tmp_path / "blank.csv",
             "--cache", context_run / "c.h5", "--output", tmp_path / "p.csv"],
            "blank.csv", "patient_id", "blank on all 12")
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------- encoder folders
def broken_folders(root: Path) -> dict:
    from test_encoders import save_tiny_clip, save_tiny_vit
    save_tiny_vit(root / "vit")
    save_tiny_clip(root / "clip")
    out = {}
    for name, family in (("vit", "hf"), ("clip", "open_clip")):
        cut = shutil.copytree(root / name, root / f"{name}-cut")
        weights = next(cut.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        out[f"{family}-cut"] = (f"{family}:{cut}", weights.name)
    bad = shutil.copytree(root / "vit", root / "vit-cfg")
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(hidden_size=48, intermediate_size=96)
    (bad / "config.json").write_text(json.dumps(cfg))
    out["hf-config"] = (f"hf:{bad}", "vit-cfg")
    return out


def test_broken_encoder_folders_are_one_line_naming_the_file(synth_dir, tmp_path):
    for case, (backbone, needle) in broken_folders(tmp_path).items():
        line = refused(["extract", "--data", synth_dir, "--cache", tmp_path / f"{case}.h5",
                        "--backbone", backbone, "--precision", "fp32", "--workers", "0"],
                       needle)
        assert ("unreadable weight file" in line) == case.endswith("cut"), line
        assert not (tmp_path / f"{case}.h5").exists()
