"""Subgroup tables in every scored report (fit-head, cv, evaluate), ``--subgroups``, ``--split
by:COLUMN`` / ``by:COLUMN=VALUE`` through the CLI, and ``skinfeat card``.

The data: a HAM10000-layout metadata CSV with the Dataverse ``dataset`` column (three sources,
no lesion in two) and embeddings with class signal in an HDF5 file made outside skinfeat; no
image files (stage two reads none)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from skinfeat.cli import main
from skinfeat.data.presets import PRESETS

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

SOURCES = ("rosendahl", "vidir_modern", "vienna_dias")
FAST = ["--epochs", "3", "--seed", "0"]


def sourced_table(n_lesions: int = 210, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = list(PRESETS["ham10000"].classes)
    lesions = np.repeat(np.arange(n_lesions), 2)
    dx = np.array(classes * (n_lesions // len(classes) + 1))[:n_lesions]
    source = np.array(SOURCES * (n_lesions // len(SOURCES) + 1))[:n_lesions]
    rng.shuffle(source)
    n = 2 * n_lesions
    return pd.DataFrame({
        "lesion_id": [f"HAM_{i:07d}" for i in lesions],
        "image_id": [f"ISIC_{i:07d}" for i in range(n)],
        "dx": np.repeat(dx, 2), "dx_type": "histo",
        "age": rng.integers(5, 90, n).astype(float),
        "sex": rng.choice(["male", "female"], n),
        "localization": rng.choice(["back", "face", "trunk"], n),
        "dataset": np.repeat(source, 2)})


def write_set(root: Path, table: pd.DataFrame, seed: int = 0) -> tuple[Path, Path]:
    """The metadata CSV and an embedding file with class signal (16-d, class mean + noise)."""
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "HAM10000_metadata.csv"
    table.to_csv(csv, index=False)
    classes = list(PRESETS["ham10000"].classes)
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 1.5, (len(classes), 16))
    codes = table["dx"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    emb = (means[codes] + rng.normal(0, 1, (len(table), 16))).astype(np.float32)
    cache = root / "emb.h5"
    with h5py.File(cache, "w") as f:
        f.create_dataset("image_id", data=table["image_id"].to_numpy().astype(object),
                         dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=emb)
    return csv, cache


@pytest.fixture(scope="module")
def sourced(tmp_path_factory) -> tuple[Path, Path]:
    return write_set(tmp_path_factory.mktemp("sourced"), sourced_table())


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def data_args(sourced) -> list:
    csv, cache = sourced
    return ["--data", csv, "--preset", "ham10000", "--cache", cache]


@pytest.fixture(scope="module")
def fitted(sourced, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "run"
    r = cli("fit-head", *data_args(sourced), "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    return out


def test_fit_head_reports_the_subgroups_of_its_test_part(fitted):
    report = (fitted / "report.md").read_text()
    assert "## Subgroups (test)" in report
    for field in ("age", "sex", "localization", "dataset", "dx_type"):
        assert f"### {field}" in report and (fitted / f"subgroups_{field}.png").is_file()
    summary = json.loads((fitted / "metrics.json").read_text())
    tables = {t["field"]: t for t in summary["subgroups"]["fields"]}
    assert list(tables) == ["age", "sex", "localization", "dataset", "dx_type"]
    n_test = summary["info"]["sizes"]["test"]
    assert sum(row["n_images"] for row in tables["dataset"]["rows"]) == n_test
    assert summary["info"]["sources_split"] is None      # not a by: split
    card = (fitted / "README.md").read_text()
    assert "| Subgroup results | balanced accuracy per subgroup; age:" in card


def test_the_dataset_column_never_reaches_the_bundle_encoder(fitted):
    config = json.loads((fitted / "config.json").read_text())
    encoder = config["encoder"]
    fields = [*encoder["numeric"], *encoder["categorical"]]
    assert fields == ["age", "sex", "localization"]
    assert "dataset" not in json.dumps(encoder) and "dx_type" not in json.dumps(encoder)
    assert "dataset" in config["dataset"]["subgroups"]   # described, as the spec says


def test_subgroups_none_and_a_chosen_field(sourced, tmp_path):
    out = tmp_path / "none"
    assert cli("fit-head", *data_args(sourced), "--out", out, *FAST,
               "--subgroups", "none").exit_code == 0
    assert "## Subgroups" not in (out / "report.md").read_text()
    assert "subgroups" not in json.loads((out / "metrics.json").read_text())
    assert not list(out.glob("subgroups_*.png"))
    assert "not computed for this run" in (out / "README.md").read_text()
    out = tmp_path / "sex"
    assert cli("fit-head", *data_args(sourced), "--out", out, *FAST,
               "--subgroups", "sex").exit_code == 0
    fields = json.loads((out / "metrics.json").read_text())["subgroups"]["fields"]
    assert [t["field"] for t in fields] == ["sex"]


def test_an_unknown_subgroup_field_is_one_line_and_writes_nothing(sourced, tmp_path):
    r = CliRunner().invoke(main, ["fit-head", *map(str, data_args(sourced)), "--out",
                                  str(tmp_path / "bad"), "--subgroups", "sex,skin_tone"])
    assert r.exit_code != 0 and "skin_tone" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()


def test_fit_head_by_value_scores_only_that_value(sourced, tmp_path):
    out = tmp_path / "held"
    r = cli("fit-head", *data_args(sourced), "--out", out, *FAST,
            "--split", "by:dataset=vienna_dias")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(sourced[0])
    split = pd.read_csv(out / "splits.csv").merge(table[["image_id", "dataset"]], on="image_id")
    assert set(split.loc[split["split"] == "test", "dataset"]) == {"vienna_dias"}
    assert (split["split"] == "test").sum() == (table["dataset"] == "vienna_dias").sum()
    assert "vienna_dias" not in set(split.loc[split["split"] != "test", "dataset"])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["info"]["split"] == "by:dataset=vienna_dias"
    assert summary["info"]["sources_split"] == {
        "column": "dataset", "trained_on": ["rosendahl", "vidir_modern"],
        "scored_on": ["vienna_dias"]}
    report = (out / "report.md").read_text()
    assert "trained on rosendahl, vidir_modern; scored on vienna_dias" in report
    rows = {t["field"]: t for t in summary["subgroups"]["fields"]}["dataset"]["rows"]
    assert [row["value"] for row in rows] == ["vienna_dias"]
    assert "trained on rosendahl, vidir_modern, scored on vienna_dias" in \
        (out / "README.md").read_text()


def test_fit_head_refuses_cv_spellings_of_by(sourced, tmp_path):
    r = CliRunner().invoke(main, ["fit-head", *map(str, data_args(sourced)), "--out",
                                  str(tmp_path / "x"), "--split", "by:dataset"])
    assert r.exit_code != 0 and "by:dataset=VALUE" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_cv_by_column_holds_each_source_out_with_subgroup_tables(sourced, tmp_path):
    out = tmp_path / "cv"
    r = cli("cv", *data_args(sourced), "--out", out, *FAST, "--split", "by:dataset",
            "--models", "head", "--inputs", "fused,image", "--jobs", "1")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(sourced[0])
    folds = pd.read_csv(out / "cv_folds.csv").merge(table[["image_id", "dataset"]],
                                                    on="image_id")
    for k, source in enumerate(SOURCES):   # fold k scores the k-th value, sorted
        assert set(folds.loc[folds["fold_seed0"] == k, "dataset"]) == {source}
    res = json.loads((out / "cv_metrics.json").read_text())
    assert res["config"]["folds"] == 3 and res["split"] == "by:dataset"
    assert "leave-one-dataset-out" in res["protocol"]
    assert {r["fold"] for r in res["records"]} == {0, 1, 2}
    sub = res["subgroups"]["head"]
    assert set(sub) == {"fused", "image"}
    rows = {t["field"]: t for t in sub["fused"]["fields"]}["dataset"]["rows"]
    assert {row["value"]: row["n_images"] for row in rows} == \
        table["dataset"].value_counts().to_dict()   # every image scored once, out of fold
    assert res["sources_split"] == {"column": "dataset", "scored_on": {
        str(k): [s] for k, s in enumerate(SOURCES)}}
    report = (out / "cv_report.md").read_text()
    assert "fold 0 scored rosendahl; fold 1 scored vidir_modern; fold 2 scored vienna_dias" \
        in report
    assert "## Subgroups (out-of-fold): head, fused" in report
    assert "](subgroups_head_fused/subgroups_dataset.png)" in report
    assert (out / "subgroups_head_image" / "subgroups_sex.png").is_file()


def test_cv_subgroups_none(sourced, tmp_path):
    out = tmp_path / "cv"
    r = cli("cv", *data_args(sourced), "--out", out, *FAST, "--folds", "3", "--models", "head",
            "--inputs", "fused", "--jobs", "1", "--subgroups", "none")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "cv_metrics.json").read_text())["subgroups"] == {}
    assert "## Subgroups" not in (out / "cv_report.md").read_text()
    assert not list(out.glob("subgroups_*"))


def test_cv_by_column_refuses_a_lesion_across_sources(tmp_path):
    table = sourced_table()
    table.loc[1, "dataset"] = "vienna_dias" if table.loc[0, "dataset"] != "vienna_dias" \
        else "rosendahl"   # lesion 0's second image in another source
    csv, cache = write_set(tmp_path / "crossing", table)
    r = CliRunner().invoke(main, ["cv", "--data", str(csv), "--preset", "ham10000", "--cache",
                                  str(cache), "--out", str(tmp_path / "cv"), "--split",
                                  "by:dataset", "--epochs", "2"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "more than one dataset value" in r.output and "HAM_0000000" in r.output


def test_cv_still_takes_the_old_spellings():
    from skinfeat.learn.cv import CVConfig
    from skinfeat.learn.runconfig import ConfigError, RunConfig
    for split in ("lesion", "group", "image", "by:dataset"):
        CVConfig(split=split).check()
    for bad in ("none", "by:dataset=rosendahl", "lesions"):
        with pytest.raises(ValueError):
            CVConfig(split=bad).check()
    for split in ("lesion", "image", "none", "by:dataset=rosendahl"):
        RunConfig(split=split).check()
    recipe = RunConfig(split="group")
    recipe.check()
    assert recipe.split == "group"
    with pytest.raises(ConfigError, match="split"):
        RunConfig(split="by:dataset").check()


def test_evaluate_reports_subgroups_and_card_lists_the_evaluation(fitted, tmp_path):
    other = sourced_table(n_lesions=70, seed=5)
    other["image_id"] = [f"EXT_{i:05d}" for i in range(len(other))]
    other["lesion_id"] = [f"EXT_L{i}" for i in np.repeat(np.arange(70), 2)]
    csv, cache = write_set(tmp_path / "external", other, seed=5)
    r = cli("evaluate", "--model", fitted, "--data", csv, "--preset", "ham10000", "--cache",
            cache, "--out", fitted / "eval-external")
    assert r.exit_code == 0, r.output
    where = fitted / "eval-external"
    report = (where / "evaluate_report.md").read_text()
    assert "## Subgroups" in report and "### dataset" in report
    sub = json.loads((where / "evaluate_metrics.json").read_text())["subgroups"]
    assert sum(row["n_images"] for row in sub["fields"][0]["rows"]) == len(other)
    assert (where / "subgroups_dataset.png").is_file()
    before = (fitted / "README.md").read_text()
    assert "none: no external set was scored" in before
    r = cli("card", "--model", fitted)
    assert r.exit_code == 0, r.output and "README.md" in r.output
    card = (fitted / "README.md").read_text()
    assert "| External test | ham10000 (140 images): balanced accuracy" in card
    assert "| Subgroup results | balanced accuracy per subgroup" in card
    none = tmp_path / "none"
    assert cli("evaluate", "--model", fitted, "--data", csv, "--preset", "ham10000", "--cache",
               cache, "--out", none, "--subgroups", "none").exit_code == 0
    assert "subgroups" not in json.loads((none / "evaluate_metrics.json").read_text())
    assert "## Subgroups" not in (none / "evaluate_report.md").read_text()


def test_card_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["card", "--model", str(tmp_path)])
    assert r.exit_code != 0 and "metrics.json" in r.output and "Traceback" not in r.output


def test_api_write_card(fitted):
    import skinfeat
    path = skinfeat.write_card(fitted)
    assert path == fitted / "README.md" and "CLEAR Derm" in path.read_text()
