"""Every preset end to end, as a new user runs it on a folder in the public layout: data check ->
extract -> cv -> fit-head -> predict -> evaluate; a binary task; a spec file through the bundle;
detection and the leakage guard."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY

from skinfeat.cli import main
from skinfeat.data.datasets import DataError, detect, load_dataset
from skinfeat.data.presets import PRESETS
from skinfeat.data.spec import DatasetSpec, SpecError, load_spec
from skinfeat.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

EXTRACT = ("--backbone", TINY, "--weights", "random", "--precision", "fp32", "--workers", "0")
# One image's metadata per preset, given as --meta (field names of the public release).
META = {
    "ham10000": ("age=55", "sex=male", "localization=back"),
    "isic2019": ("age_approx=55", "anatom_site_general=head/neck", "sex=female"),
    "isic2020": ("age_approx=40", "sex=male", "anatom_site_general_challenge=torso"),
    "pad-ufes-20": ("age=63", "region=face", "gender=female", "smoke=false"),
    "csv": ("age_years=40", "body_site=back"),
}
CSV_FLAGS = ("--image-col", "file", "--label-col", "diagnosis_code", "--group-col", "patient",
             "--numeric", "age_years", "--categorical", "body_site")


def cli(*args) -> object:
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def data_of(preset: str, root: Path) -> tuple[Path, tuple[str, ...]]:
    path = make_synthetic(preset, root / preset, n_images=120, seed=3)
    return (path / "labels.csv", CSV_FLAGS) if preset == "csv" else (path, ())


@pytest.mark.parametrize("preset", ["ham10000", "isic2019", "isic2020", "pad-ufes-20", "csv"])
def test_each_layout_end_to_end(preset, tmp_path):
    data, flags = data_of(preset, tmp_path)
    spec = PRESETS[preset]
    s = json.loads(cli("data", "check", data, "--json", *flags).stdout)
    assert s["preset"] == preset and s["images"] > 40
    assert set(s["fields"]["numeric"]) | set(s["fields"]["categorical"]) == \
        set(spec.metadata or ("age_years", "body_site"))
    assert not set(s["fields"]["categorical"]) & {"dx_type", "biopsed", "diagnosis", "target",
                                                   "benign_malignant"}
    cache = tmp_path / "c.h5"
    cli("extract", "--data", data, "--cache", cache, *flags, *EXTRACT)
    cv = cli("cv", "--data", data, "--cache", cache, "--out", tmp_path / "cv", "--folds", "3",
             "--models", "head,lgbm", "--inputs", "fused", "--epochs", "4", "--jobs", "1", *flags)
    assert "report:" in cv.output
    res = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert res["dataset"] == preset and len(res["records"]) == 6
    assert ("reference" in res) == (preset == "ham10000")  # the published numbers: HAM only
    run = tmp_path / "run"
    cli("fit-head", "--data", data, "--cache", cache, "--out", run, "--epochs", "4", *flags)
    config = json.loads((run / "config.json").read_text())
    assert DatasetSpec.from_dict(config["dataset"]).name == preset
    metrics = json.loads((run / "metrics.json").read_text())
    binary = preset == "isic2020"
    assert ("auc" in metrics["model"]) == binary and (config["threshold"] is None) != binary
    assert config["classes"] == s["classes"]
    report = (run / "report.md").read_text()
    assert ("Reference recipe" in report) == (preset == "ham10000")
    image = pd.read_csv(run / "splits.csv").query("split == 'test'")["image_id"].iloc[0]
    path = load_dataset(data, "csv" if preset == "csv" else preset,
                        **({"image_column": "file", "label_column": "diagnosis_code"}
                           if preset == "csv" else {})).table.set_index("image_id").loc[image,
                                                                                         "path"]
    meta = [x for m in META[preset] for x in ("--meta", m)]
    out = json.loads(cli("predict", "--model", run, "--image", path, "--json", *meta).stdout)
    assert out["prediction"] in config["classes"]
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-6
    ev = cli("evaluate", "--model", run, "--data", data, "--out", tmp_path / "ev", *flags)
    assert "images" in ev.output
    evm = json.loads((tmp_path / "ev" / "evaluate_metrics.json").read_text())
    # The model saw most of this set: only the images of its held-out groups are scored.
    assert evm["info"]["seen_in_training"]["images"] > 0
    assert evm["info"]["overlap_with_training"]["rows"] == 0


def test_isic2018_test_set_is_cached_and_scored_but_never_trained_on(tmp_path):
    ham = make_synthetic("ham10000", tmp_path / "ham", n_images=70, seed=3)
    test = make_synthetic("isic2018-test", tmp_path / "isic18", n_images=21, seed=4)
    assert detect(test)[0] == "isic2018-test"
    cli("extract", "--data", ham, "--cache", tmp_path / "ham.h5", *EXTRACT)
    cli("extract", "--data", test, "--cache", tmp_path / "test.h5", *EXTRACT)  # cached once too
    r = CliRunner().invoke(main, ["fit-head", "--data", str(test), "--cache",
                                  str(tmp_path / "test.h5"), "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and "is a test set" in r.output
    cli("fit-head", "--data", ham, "--cache", tmp_path / "ham.h5", "--out", tmp_path / "run",
        "--epochs", "4")
    cli("evaluate", "--model", tmp_path / "run", "--data", test, "--out", tmp_path / "ev")
    info = json.loads((tmp_path / "ev" / "evaluate_metrics.json").read_text())["info"]
    assert info["layout"] == "isic2018-test" and info["metadata_missing"] and info["n"] == 21


def test_binary_task_from_a_multiclass_set(tmp_path):
    ham = make_synthetic("ham10000", tmp_path / "ham", n_images=70, seed=3)
    test = make_synthetic("isic2018-test", tmp_path / "isic18", n_images=21, seed=4)
    cli("extract", "--data", ham, "--cache", tmp_path / "ham.h5", *EXTRACT)
    r = cli("fit-head", "--data", ham, "--cache", tmp_path / "ham.h5", "--out", tmp_path / "run",
            "--epochs", "4", "--task", "binary:mel")
    assert "task binary:mel" in r.output and "auc" in r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"] == ["not_mel", "mel"] and 0 <= config["threshold"] <= 1
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["model"]
    assert {"auc", "sensitivity_at_90_specificity", "threshold"} <= set(m)
    assert "ROC AUC" in (tmp_path / "run" / "report.md").read_text()
    cli("cv", "--data", ham, "--cache", tmp_path / "ham.h5", "--out", tmp_path / "cv",
        "--folds", "3", "--models", "head", "--inputs", "fused", "--epochs", "4", "--jobs", "1",
        "--task", "binary:mel")
    cv = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert cv["headline"][0] == "auc" and "auc" in cv["summary"]["head"]["fused"]
    # The scored set's 7 labels are read as the model's task: mel against the rest.
    ev = cli("evaluate", "--model", tmp_path / "run", "--data", test, "--out", tmp_path / "ev")
    assert "auc" in ev.output
    evm = json.loads((tmp_path / "ev" / "evaluate_metrics.json").read_text())
    assert evm["model"]["per_class"]["mel"]["support"] == 3
    bad = CliRunner().invoke(main, ["fit-head", "--data", str(ham), "--cache",
                                    str(tmp_path / "ham.h5"), "--out", str(tmp_path / "x"),
                                    "--task", "binary:melanoma"])
    assert bad.exit_code != 0 and "no class 'melanoma'" in bad.output


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_spec_file_round_trips_through_the_bundle(tmp_path, suffix):
    root = make_synthetic("csv", tmp_path / "set", n_images=70, seed=3)
    spec = DatasetSpec(name="my-clinic", classes=("benign", "carcinoma", "melanoma"),
                       class_names={"melanoma": "malignant melanoma"}, labels_file=("labels.csv",),
                       label_column="diagnosis_code", image_column="file",
                       group_column="patient", group_name="patient", numeric=("age_years",),
                       categorical=("body_site",), ranges={"age_years": (0.0, 120.0)})
    path = tmp_path / f"spec{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(spec.to_dict()))
    else:
        lines = ["[dataset]"] + [f"{k} = {json.dumps(v)}" for k, v in spec.to_dict().items()
                                 if v is not None and not isinstance(v, dict)]
        lines += ["[dataset.class_names]", 'melanoma = "malignant melanoma"',
                  "[dataset.ranges]", "age_years = [0.0, 120.0]"]
        path.write_text("\n".join(lines) + "\n")
    assert load_spec(path) == spec
    cli("extract", "--data", root, "--spec", path, "--cache", tmp_path / "c.h5", *EXTRACT)
    cli("fit-head", "--data", root, "--spec", path, "--cache", tmp_path / "c.h5",
        "--out", tmp_path / "run", "--epochs", "4")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert DatasetSpec.from_dict(config["dataset"]) == spec
    from skinfeat.deploy.model import Model
    p = Model(tmp_path / "run")
    assert p.spec == spec and p.fields == ("age_years", "body_site")
    image = next((root / "photos").glob("*.jpg"))
    r = cli("predict", "--model", tmp_path / "run", "--image", image, "--meta", "age_years=40")
    assert "malignant melanoma" in r.output or "melanoma" in r.output
    assert "missing metadata (treated as missing, as in training): body_site" in r.output
    bad = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "run"), "--image",
                                    str(image), "--meta", "sex=male"])
    assert bad.exit_code != 0 and "no such field; its fields are age_years, body_site" in bad.output


def test_detection_is_shallow_says_what_it_chose_and_refuses_ambiguity(tmp_path):
    ham = make_synthetic("ham10000", tmp_path / "a" / "ham", n_images=30, seed=1)
    assert detect(tmp_path / "a") == ("ham10000", ham / "HAM10000_metadata.csv")
    deep = tmp_path / "b" / "1" / "2" / "3"
    deep.mkdir(parents=True)
    (deep / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    with pytest.raises(DataError, match="no known dataset layout found"):
        detect(tmp_path / "b")   # three levels down: not walked
    make_synthetic("isic2018-test", tmp_path / "a", n_images=7, seed=2)
    with pytest.raises(DataError, match=r"several dataset tables found \(ham10000: .*"
                                        r"isic2018-test: .*pass --preset NAME"):
        detect(tmp_path / "a")
    r = CliRunner().invoke(main, ["data", "check", str(tmp_path / "a"), "--preset", "ham10000"])
    assert r.exit_code == 0 and "preset ham10000" in r.output


def test_leaky_columns_never_reach_a_model(tmp_path):
    with pytest.raises(SpecError, match="dx_type leak"):
        DatasetSpec(name="x", categorical=("sex", "dx_type"))
    with pytest.raises(SpecError, match="target leak"):
        DatasetSpec(name="x", label_column="benign_malignant", numeric=("target",))
    root = make_synthetic("pad-ufes-20", tmp_path / "pad", n_images=30, seed=1)
    r = CliRunner().invoke(main, ["data", "check", str(root), "--categorical", "region,biopsed"])
    assert r.exit_code != 0 and "biopsed leak" in r.output
    table = load_dataset(root).table
    assert "biopsed" not in table.columns and "diagnostic" not in table.columns


def test_missing_tokens_blank_groups_suffixes_and_the_empty_class(tmp_path):
    root = make_synthetic("isic2019", tmp_path / "i19", n_images=70, seed=3)
    data = load_dataset(root)
    assert "unk" not in data.classes and data.dropped_classes == ("unk",)
    truth = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    meta = pd.read_csv(root / "ISIC_2019_Training_Metadata.csv", keep_default_na=False)
    assert truth["image"].str.endswith("_downsampled").any()
    assert not data.table["image_id"].str.endswith("_downsampled").any()   # one id per image
    blank = meta.loc[meta["lesion_id"] == "", "image"].str.replace("_downsampled", "")
    by_id = data.table.set_index("image_id")["group_id"]
    assert (by_id[blank] == blank.to_numpy()).all()   # a blank lesion id groups by image
    pad = load_dataset(make_synthetic("pad-ufes-20", tmp_path / "pad", n_images=40, seed=2))
    assert pad.table["background_father"].isna().any()          # UNK and blanks are missing
    assert not pad.table["background_father"].isin(["unk", ""]).any()
    assert set(pad.table["gender"].dropna()) <= {"female", "male"}
    assert pad.table["image_id"].str.startswith("PAT_").all()
    assert not pad.table["image_id"].str.endswith(".png").any()


def test_the_docs_spec_example_is_a_valid_spec(tmp_path):
    page = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    block = page.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my-set.toml").write_text(block)
    spec = load_spec(tmp_path / "my-set.toml")
    assert spec.name == "my-clinic" and spec.group_column == "patient"
    assert spec.merges == {"carcinoma_in_situ": "carcinoma"} and "biopsy_result" in spec.leaky
    with pytest.raises(SpecError, match="biopsy_result leak"):
        spec.with_columns(categorical=("body_site", "biopsy_result"))
