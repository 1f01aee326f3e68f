"""Hostile input at the deploy seams: edited bundles, bad ``tune --storage`` values, a corrupt or
torn study journal, broken JSON; and the fold-ensemble ONNX export, which must equal predict.

Every refusal goes through ``hostile.refused``: exit 1, no traceback, one ``Error:`` line naming
the file (or storage) and the key, and the run folder byte-identical afterwards.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile import ok, refused
from torch import nn

from skinfeat.data.metadata import MetadataEncoder
from skinfeat.deploy.model import Model

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input

NAN, INF = float("nan"), float("inf")


def edit(run: Path, change) -> Path:
    """Apply ``change`` to the bundle's config.json (as a text editor would save it)."""
    path = run / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))   # NaN / Infinity as Python's json writes them
    return path


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def change(config: dict) -> None:
        node = config
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value(node[keys[-1]]) if callable(value) else value
    return change


@pytest.fixture
def run(ship_runs, tmp_path) -> Path:
    """A private copy of the session's fusion-head run, to edit."""
    out = tmp_path / "run"
    shutil.copytree(ship_runs["head"], out)
    return out


@pytest.fixture(scope="module")
def cv_models(synth_dir, synth_cache, tmp_path_factory) -> Path:
    """``cv --save-models`` on the synthetic data: head and LightGBM fold ensembles."""
    out = tmp_path_factory.mktemp("hostile_cv") / "cv"
    ok("cv", "--data", synth_dir, "--cache", synth_cache, "--out", out, "--folds", "3",
       "--epochs", "3", "--inputs", "fused", "--models", "head,lgbm", "--jobs", "1",
       "--save-models")
    return out / "models"


@pytest.fixture
def ensemble(cv_models, tmp_path) -> Path:
    out = tmp_path / "ensemble"
    shutil.copytree(cv_models / "head_fused", out)
    return out


def image_of(synth_table) -> str:
    return str(synth_table["path"].iloc[0])


# ---------------------------------------------------------------- edited bundles
EDITS = {   # edit -> the key the error must name
    "zero std": (setter("encoder", "stds", "age", 0.0), "encoder.stds.age"),
    "negative std": (setter("encoder", "stds", "age", -3.0), "encoder.stds.age"),
    "NaN mean": (setter("encoder", "means", "age", NAN), "encoder.means.age"),
    "categories not strings": (setter("encoder", "categories", "sex", [1, 2]),
                               "encoder.categories.sex"),
    "category never matched": (setter("encoder", "categories", "localization",
                                      lambda c: ["Back"] + c[1:]),
                               "encoder.categories.localization"),
    "drop_first a string": (setter("encoder", "drop_first", "false"), "encoder.drop_first"),
    "zero temperature": (setter("calibration", "temperature", 0.0), "calibration.temperature"),
    "negative temperature": (setter("calibration", "temperature", -1.5),
                             "calibration.temperature"),
    "NaN adjust": (setter("calibration", "adjust", lambda v: [NAN] * len(v)),
                   "calibration.adjust"),
    "short adjust": (setter("calibration", "adjust", lambda v: v[:3]), "calibration.adjust"),
    "inf decision offset": (setter("calibration", "decision_offset",
                                   lambda v: [INF] + v[1:]), "calibration.decision_offset"),
    "bias of the wrong length": (setter("calibration", "bias", [0.0, 0.0]), "calibration.bias"),
    "unknown method": (setter("calibration", "method", "platt"), "calibration.method"),
    "threshold above 1": (setter("threshold", 1.5), "threshold"),
    "threshold a string": (setter("threshold", "0.5"), "threshold"),
    "duplicate classes": (setter("classes", lambda c: [c[0]] + c[:-1]), "classes"),
    "zero embed_dim": (setter("head", "embed_dim", 0), "head.embed_dim"),
    "negative meta_dim": (setter("head", "meta_dim", -1), "head.meta_dim"),
    "n_classes a string": (setter("head", "n_classes", "7"), "head.n_classes"),
    "n_classes not the classes": (setter("head", "n_classes", 6), "head.n_classes"),
    "old temperature zero": (lambda c: (c.pop("calibration"), c.update(temperature=0)),
                             "temperature"),
    "model_type unknown": (setter("model_type", "svm"), "model_type"),
    "encoder field not in the dataset": (
        lambda c: c["encoder"].update(numeric=["weight"], means={"weight": 1.0},
                                      stds={"weight": 1.0}), "encoder.numeric"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edited_bundle_is_refused_by_predict(run, synth_table, name):
    change, key = EDITS[name]
    edit(run, change)
    refused(["predict", "--model", run, "--image", image_of(synth_table), "--output",
             run.parent / "p.csv"], str(run / "config.json"), key, protect=[run])
    assert not (run.parent / "p.csv").exists()


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_edited_bundle_is_refused_by_export_and_evaluate(run, synth_dir, tmp_path, command):
    edit(run, setter("encoder", "stds", "age", 0.0))
    args = (["export", "--model", run, "--onnx", tmp_path / "m.onnx"] if command == "export"
            else ["evaluate", "--model", run, "--data", synth_dir, "--out", tmp_path / "ev"])
    refused(args, str(run / "config.json"), "encoder.stds.age", protect=[run])
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("text,needles", [
    ('{"format": "skinfeat-bundle/1",\n "classes": ["a" "b"]}', ["line 2, column 18",
                                                                 "Expecting ','"]),
    ('{"format": "skinfeat-bundle/1", "classes"', ["line 1", "not valid JSON"]),
    (b'{"format": "\xff"}', ["not UTF-8"]),
])
def test_broken_config_json_names_the_file_and_line(run, synth_table, text, needles):
    path = run / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(["predict", "--model", run, "--image", image_of(synth_table)], str(path), *needles,
            protect=[run])


# ---------------------------------------------------------------- edited ensembles
@pytest.mark.parametrize("members,needle", [
    (["seed42_fold0", "seed42_fold7"], "members[1]"),       # a member folder that is not there
    (["../../elsewhere"], "members[0]"),                     # a path out of the bundle
    (["seed42_fold0", "seed42_fold0"], "members"),           # the same fold twice
    ([], "members"),
    ("seed42_fold0", "members"),
])
def test_ensemble_with_bad_members_is_refused(ensemble, synth_table, members, needle):
    edit(ensemble, setter("members", members))
    refused(["predict", "--model", ensemble, "--image", image_of(synth_table)],
            str(ensemble / "config.json"), needle, protect=[ensemble])


def test_an_edited_member_names_its_own_config(ensemble, synth_table, tmp_path):
    member = ensemble / "seed42_fold1"
    edit(member, setter("calibration", "temperature", 0.0))
    refused(["export", "--model", ensemble, "--onnx", tmp_path / "e.onnx"],
            str(member / "config.json"), "calibration.temperature", protect=[ensemble])


def test_a_member_on_another_backbone_is_refused(ensemble, synth_table):
    member = ensemble / "seed42_fold2"
    edit(member, setter("backbone", "backbone", "test_vit"))
    refused(["predict", "--model", ensemble, "--image", image_of(synth_table)],
            str(member / "config.json"), "backbone", "differs from the ensemble",
            protect=[ensemble])


def test_lightgbm_ensemble_export_is_refused(cv_models, tmp_path):
    refused(["export", "--model", cv_models / "lgbm_fused", "--onnx", tmp_path / "l.onnx"],
            "lgbm_fused", "LightGBM", protect=[cv_models])
    assert not (tmp_path / "l.onnx").exists()


# ---------------------------------------------------------------- tune --storage, journal
def tune_args(synth_dir, synth_cache, out, *extra) -> list:
    return ["tune", "--data", synth_dir, "--cache", synth_cache, "--out", out, "--trials", "2",
            "--folds", "2", "--max-epochs", "2", *extra]


@pytest.mark.parametrize("url,needles", [
    ("foo://host/db", ["--storage foo://host/db", "unknown database kind 'foo'"]),
    ("tune.db", ["--storage tune.db", "not a database URL"]),
    ("sqlite:///{tmp}/no/such/folder/t.db", ["/no/such/folder", "does not exist"]),
    ("sqlite:///{tmp}/notdb.db", ["notdb.db", "not an SQLite database"]),
    ("sqlite:///{tmp}", ["is a folder"]),
    ("sqlite://", ["--storage sqlite://", "in-memory"]),
    ("sqlite:///{tmp}/t.db?timeout=soon", ["t.db?timeout=soon", "cannot open the database"]),
    ("postgresql://me:s3cret@127.0.0.1:9/study", ["postgresql://me:***@127.0.0.1:9/study"]),
])
def test_bad_storage_is_one_line(synth_dir, synth_cache, tmp_path, url, needles):
    (tmp_path / "notdb.db").write_text("these are my notes, not a database\n")
    url = url.format(tmp=tmp_path)
    line = refused(tune_args(synth_dir, synth_cache, tmp_path / "out", "--storage", url,
                             "--jobs", "1"), *needles, protect=[tmp_path])
    assert "s3cret" not in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad,needle", [
    (b'{"op_code": 0, "worker_id": "a"\n', "line 2: not a JSON record"),   # torn mid-file
    (b'[1, 2, 3]\n', "line 2: a JSON value that is not a study record"),
])
def test_a_corrupt_journal_line_is_an_error_naming_file_and_line(synth_dir, synth_cache,
                                                                tmp_path, bad, needle):
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "study.journal"
    journal.write_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "s", '
                        b'"directions": [1]}\n' + bad + b'{"op_code": 4, "worker_id": "w"}\n')
    refused(tune_args(synth_dir, synth_cache, out, "--jobs", "2"), str(journal), needle,
            protect=[out])


def test_a_torn_last_journal_line_is_set_aside_and_the_study_resumes(synth_dir, synth_cache,
                                                                      tmp_path, caplog):
    out = tmp_path / "out"
    ok(*tune_args(synth_dir, synth_cache, out, "--jobs", "2"))
    first = json.loads((out / "tune_metrics.json").read_text())["history"]
    journal = out / "study.journal"
    intact = journal.read_bytes()
    torn = b'{"op_code":6,"worker_id":"x","trial_id":1,"par'    # an append cut short
    journal.write_bytes(intact + torn)
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        ok(*tune_args(synth_dir, synth_cache, out, "--jobs", "2", "--trials", "3"))
    assert "torn last record" in caplog.text and str(journal) in caplog.text
    assert (out / "study.journal.torn").read_bytes() == torn            # nothing thrown away
    assert journal.read_bytes().startswith(intact) and journal.read_bytes().endswith(b"\n")
    again = json.loads((out / "tune_metrics.json").read_text())["history"]
    assert sorted(h["number"] for h in again) == [0, 1, 2]
    assert [(h["params"], h["value"]) for h in again[:2]] == \
        [(h["params"], h["value"]) for h in first]                       # resumed, not rerun


# ---------------------------------------------------------------- what still works
def test_valid_bundles_still_predict_identically(run, ship_runs, synth_table, tmp_path):
    """Values at the edge of what is allowed load, and a re-saved config predicts byte for byte
    as the original."""
    rows = synth_table.iloc[:8][["path", "age", "sex", "localization"]].astype(object)
    rows = rows.rename(columns={"path": "image"})
    rows.iloc[2, 1:] = None
    rows.to_csv(tmp_path / "rows.csv", index=False)

    def predict(model: Path, name: str) -> bytes:
        ok("predict", "--model", model, "--csv", tmp_path / "rows.csv", "--output",
           tmp_path / name)
        return (tmp_path / name).read_bytes()

    want = predict(ship_runs["head"], "a.csv")
    # Compact JSON, keys in another order, a multi-class model's unused threshold at a bound.
    config = json.loads((run / "config.json").read_text())
    config = {k: config[k] for k in sorted(config, reverse=True)}
    config["threshold"] = 1.0
    (run / "config.json").write_text(json.dumps(config, separators=(",", ":")))
    assert predict(run, "b.csv") == want
    got = pd.read_csv(tmp_path / "b.csv")
    assert np.isfinite(got.filter(like="p_").to_numpy()).all() and got["error"].isna().all()


def test_fold_ensemble_export_equals_predict(cv_models, synth_table, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from skinfeat.deploy.export import onnx_probabilities
    from skinfeat.embed.transform import preprocess

    model = cv_models / "head_fused"
    out = tmp_path / "ensemble.onnx"
    r = ok("export", "--model", model, "--onnx", out)
    assert "one metadata input per member" in r.output
    p = Model(model)
    assert len(p.members) == 3
    rows = synth_table.iloc[:10][["image_id", "path", "age", "sex", "localization"]]
    rows = rows.astype(object).reset_index(drop=True)
    rows.iloc[1, 2:] = None                                    # every field missing
    rows.iloc[2, 3] = None                                     # sex missing
    rows.iloc[3, 2] = None                                     # age missing
    rows.iloc[4, 4] = "somewhere else"                         # unseen: missing
    preds = p.predict_table(rows)
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    side = json.loads(out.with_suffix(".json").read_text())
    # The caller builds every input from the sidecar alone: member i's encoder for meta_i.
    metas = {}
    for m, entry in zip(p.members, side["members"], strict=False):
        enc = MetadataEncoder.from_dict(entry["metadata"]["encoder"])
        assert enc.to_dict() == m.encoder.to_dict() and entry["name"] == m.run.name
        metas[entry["input"]] = m.encode_metadata(rows)
        np.testing.assert_allclose(entry["metadata"]["missing"], enc.missing_row())
    assert list(metas) == ["meta_0", "meta_1", "meta_2"] == side["metadata"]["inputs"]
    a, b = metas["meta_0"], metas["meta_1"]                    # the folds' encoders differ
    assert a.shape != b.shape or not np.allclose(a, b)
    got = onnx_probabilities(out, image, metas)
    np.testing.assert_allclose(got, preds.proba, atol=1e-4, rtol=0)
    # The decision rule in the sidecar gives predict's decisions.
    offset = np.asarray(side["calibration"]["decision_offset"])
    assert list((np.log(got) + offset).argmax(1)) == list(preds.decided)
    # One backbone in the graph, shared by the three heads.
    graph = onnx.load(str(out))
    convs = sum(n.op_type == "Conv" for n in graph.graph.node)
    backbone, _ = p._backbone()
    assert convs == sum(isinstance(m, nn.Conv2d) for m in backbone.net.modules())
    assert [i.name for i in graph.graph.input] == ["image", "meta_0", "meta_1", "meta_2"]
    with pytest.raises(ValueError, match="3 metadata input"):
        onnx_probabilities(out, image, metas["meta_0"])       # one encoding for all: refused
