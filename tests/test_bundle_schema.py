"""The typed bundle schema: BundleConfig / EnsembleConfig round-trip the configs skinfeat
writes, refuse unknown keys and wrong types naming the file and the key, and the one writer
never leaves a bundle that would not load."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from skinfeat.deploy.bundle import BundleError, load_typed, write_bundle
from skinfeat.deploy.bundle_config import (
    BundleConfig,
    BundleConfigError,
    EnsembleConfig,
    parse_config,
)


@pytest.mark.parametrize("kind", ["head", "lgbm"])
def test_written_configs_round_trip(ship_runs, kind):
    d = json.loads((ship_runs[kind] / "config.json").read_text())
    typed = BundleConfig.from_dict(d, "config.json")
    assert typed.model_type == kind and typed.to_dict() == d
    assert tuple(typed.dims) == (d["head"]["embed_dim"], d["head"]["meta_dim"],
                                 len(d["classes"]))


@pytest.mark.parametrize("change,key", [
    (lambda d: d.update(colour="red"), "unknown key(s) colour"),
    (lambda d: d.update(tta="yes"), "key 'tta'"),
    (lambda d: d.update(seed=1.5), "key 'seed'"),
    (lambda d: d.update(classes="akiec"), "key 'classes'"),
    (lambda d: d.update(format="skinfeat-bundle/9"), "key 'format'"),
    (lambda d: d["head"].update(embed_dim=None), "key 'head.embed_dim'"),
    (lambda d: d.update(model_type="svm"), "key 'model_type'"),
])
def test_a_bad_key_is_one_line_naming_file_and_key(ship_runs, change, key):
    d = json.loads((ship_runs["head"] / "config.json").read_text())
    change(d)
    with pytest.raises(BundleConfigError) as info:
        parse_config(d, "runs/x/config.json")
    msg = str(info.value)
    assert msg.startswith("runs/x/config.json: ") and key in msg and "\n" not in msg
    assert isinstance(info.value, BundleError)   # the CLI's one-line bundle error


def test_ensemble_config_of_members(ship_runs):
    first = BundleConfig.from_dict(json.loads((ship_runs["head"] / "config.json").read_text()))
    ens = EnsembleConfig.of_members(first, ["a", "b"], inputs="fused", split="lesion cv",
                                    seeds=[1], combine="mean")
    d = ens.to_dict()
    assert d["model_type"] == "ensemble" and d["encoder"] is None
    assert d["head"] == {"members": "head", "inputs": "fused",
                         "embed_dim": first.dims.embed_dim}
    assert parse_config(json.loads(json.dumps(d)), "e.json") == ens
    with pytest.raises(BundleConfigError, match="key 'members'"):
        EnsembleConfig.from_dict({**d, "members": ["a", "a"]}, "e.json")
    with pytest.raises(BundleConfigError, match="unknown key"):
        EnsembleConfig.from_dict({**d, "threshold": 0.5}, "e.json")


def test_the_writer_refuses_before_writing(ship_runs, tmp_path):
    d = json.loads((ship_runs["head"] / "config.json").read_text())
    good = BundleConfig.from_dict(d)
    bad = dataclasses.replace(good, head={**good.head, "n_classes": 3})   # not checked
    with pytest.raises(BundleConfigError, match="head.n_classes"):
        write_bundle(tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


def test_load_typed_gives_the_table_and_the_schema(ship_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ship_runs["lgbm"], run)
    table, typed = load_typed(run)
    assert isinstance(typed, BundleConfig) and typed.state == table["state"]
    assert typed.threshold == table["threshold"] and typed.classes == tuple(table["classes"])


def test_encoder_and_calibrator_states_are_strict_on_unknown_keys():
    import pandas as pd

    from skinfeat.data.metadata import MetadataEncoder
    from skinfeat.learn.calibration import Calibrator

    table = pd.DataFrame({"age": [30.0, 40.0, None], "sex": ["male", "female", "unknown"],
                          "localization": ["back", "face", "back"]})
    state = MetadataEncoder().fit(table).to_dict()
    assert MetadataEncoder.from_dict(state).to_dict() == state
    with pytest.raises(ValueError, match=r"encoder\.stdz.*unknown key"):
        MetadataEncoder.from_dict({**state, "stdz": {}})
    cal = Calibrator("temperature").to_dict()
    assert Calibrator.from_dict(cal).to_dict() == cal
    with pytest.raises(ValueError, match=r"calibration\.temprature.*unknown key"):
        Calibrator.from_dict({**cal, "temprature": 2.0})


def test_an_older_format_is_upgraded_in_one_place(ship_runs):
    """skinfeat-bundle/1 kept a model's own state under its kind (``lgbm``, ``linear``)."""
    from skinfeat.deploy.bundle_config import FORMAT, OLDER, migrate

    d = json.loads((ship_runs["lgbm"] / "config.json").read_text())
    old = {k: v for k, v in d.items() if k != "state"}
    old.update(format=OLDER[0], lgbm=d["state"])
    new = migrate(old)
    assert new == d and new["format"] == FORMAT and "lgbm" not in new
    assert "lgbm" in old   # the table read from the file is left as it was
    assert migrate(d) is d   # the current format passes through
    assert isinstance(parse_config(new, "config.json"), BundleConfig)


def test_older_shapes_are_filled_in_by_migrate(ship_runs):
    """A bundle made before the dataset description, the task and the calibrator were stored
    is upgraded by ``migrate`` alone: HAM10000, every class, its temperature."""
    from skinfeat.data.presets import PRESETS
    from skinfeat.deploy.bundle_config import migrate

    d = json.loads((ship_runs["head"] / "config.json").read_text())
    old = {k: v for k, v in d.items() if k not in ("dataset", "task", "calibration")}
    new = migrate(old)
    assert new["dataset"] == PRESETS["ham10000"].to_dict()
    assert new["task"] == {"kind": "multiclass", "positive": None}
    t = 1.0 if d.get("temperature") is None else d["temperature"]
    assert new["calibration"] == {"method": "temperature", "temperature": t}
    assert "dataset" not in old   # the table read from the file is left as it was
    assert isinstance(parse_config(new, "config.json"), BundleConfig)


def test_a_head_bundle_without_its_layer_fields_predicts_as_before(ship_runs, synth_table,
                                                                    synth_cache, tmp_path):
    """Fusion-head bundles made before the architecture was a recipe field lack ``head``,
    ``inputs`` and the layer widths and dropouts; ``migrate`` alone fills in the layers every
    head had then, and the bundle predicts as it did."""
    import numpy as np

    from skinfeat.deploy.bundle_config import HEAD_LAYERS, migrate
    from skinfeat.deploy.model import Model

    d = json.loads((ship_runs["head"] / "config.json").read_text())
    assert {k: d["head"][k] for k in HEAD_LAYERS} == HEAD_LAYERS   # the run has those layers
    old = {**d, "head": {k: v for k, v in d["head"].items() if k not in HEAD_LAYERS}}
    new = migrate(old)
    assert new["head"] == d["head"] and "inputs" not in old["head"]
    shutil.copytree(ship_runs["head"], tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    rows = synth_table[["image_id", "path", "age", "sex", "localization"]].head(20)
    want = Model(ship_runs["head"]).predict_table(rows, cache=synth_cache).proba
    got = Model(tmp_path / "old").predict_table(rows, cache=synth_cache).proba
    np.testing.assert_array_equal(got, want)
