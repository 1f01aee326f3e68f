"""Model cards the Hugging Face Hub reads (README.md with YAML metadata), and load_model from a
Hub repo id through an offline, pre-filled Hub cache."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard, constants

import skinfeat
from skinfeat.deploy.bundle_config import BundleError
from skinfeat.evaluate.card import rewrite_card
from skinfeat.evaluate.hub_card import licence_of


def test_a_runs_card_is_a_hub_model_card(ship_runs):
    run = ship_runs["head"]
    summary = json.loads((run / "metrics.json").read_text())
    assert not (run / "MODEL_CARD.md").exists()
    card = ModelCard.load(run / "README.md")
    data = card.data
    assert data.datasets == [summary["info"]["dataset"]]
    assert data.license == "cc-by-nc-4.0"            # HAM10000's data licence (its preset)
    assert "not-a-medical-device" in data.tags and data.library_name == "skinfeat"
    shown = {r.metric_type: r for r in data.eval_results}
    intervals = data.to_dict()["skinfeat"]["metrics_ci95"]
    for key, hub_key in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"),
                         ("macro_f1", "f1")):
        value, (low, high) = summary["model"][key], summary["bootstrap_ci95"][key]
        assert shown[hub_key].metric_value == pytest.approx(value, abs=1e-4)
        assert intervals[key] == pytest.approx({"value": value, "ci95_low": low,
                                                "ci95_high": high}, abs=1e-4)
        assert f"{low:.4g}"[:4] in shown[hub_key].metric_name    # the interval is in its name
    assert "CLEAR Derm" in card.text and card.text.lstrip().startswith("# Model card")


@pytest.mark.parametrize("citation, licence", [
    ("HAM10000 (Tschandl et al. 2018), CC BY-NC 4.0", "cc-by-nc-4.0"),
    ("PAD-UFES-20 (Pacheco et al. 2020), CC BY 4.0", "cc-by-4.0"),
    ("ISIC 2019 (BCN20000, HAM10000, MSK), CC BY-NC 4.0 / CC BY 4.0 mixed", "other"),
    ("", "other")])
def test_the_card_licence_is_the_data_licence(citation, licence):
    assert licence_of(citation) == licence


def hub_cache(tmp_path, monkeypatch, repo: str, run) -> str:
    """A Hub cache holding ``repo`` at one commit, as snapshot_download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(run, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # huggingface_hub 0.23 (the floor) reads the cache folder from a copy bound at its import
    from huggingface_hub import _snapshot_download
    monkeypatch.setattr(_snapshot_download, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    return commit


def test_load_model_from_a_hub_repo_id_offline(ship_runs, synth_cache, synth_table, tmp_path,
                                               monkeypatch):
    commit = hub_cache(tmp_path, monkeypatch, "skin-lab/ham-head", ship_runs["head"])
    rows = synth_table.head(12)
    want = skinfeat.load_model(ship_runs["head"]).predict(embeddings=synth_cache, metadata=rows)
    monkeypatch.chdir(tmp_path)                        # no local folder of that name
    model = skinfeat.load_model("skin-lab/ham-head")
    assert commit in str(model.path)
    got = model.predict(embeddings=synth_cache, metadata=rows)
    np.testing.assert_allclose(got.proba, want.proba, rtol=1e-6)
    assert ModelCard.load(model.path / "README.md").data.library_name == "skinfeat"
    with pytest.raises(BundleError, match="skin-lab/other: no such folder.*Hugging Face Hub"):
        skinfeat.load_model("skin-lab/other")


def test_an_old_bundle_with_MODEL_CARD_md_loads_and_gets_a_hub_card(ship_runs, synth_cache,
                                                                    synth_table, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(ship_runs["head"], old)
    (old / "README.md").rename(old / "MODEL_CARD.md")
    rows = synth_table.head(5)
    want = skinfeat.load_model(ship_runs["head"]).predict(embeddings=synth_cache, metadata=rows)
    got = skinfeat.load_model(old).predict(embeddings=synth_cache, metadata=rows)
    np.testing.assert_allclose(got.proba, want.proba, rtol=1e-6)
    assert rewrite_card(old) == old / "README.md"
    assert ModelCard.load(old / "README.md").data.eval_results


def test_the_install_pages_hub_examples_run(ship_runs, tmp_path, monkeypatch):
    """docs/install.md's two Python blocks: upload a run folder, load it back by repo id."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "install.md").read_text()
    upload, load = re.findall(r"```python\n(.*?)```", page, re.S)
    hub_cache(tmp_path, monkeypatch, "your-org/ham10000-head", ship_runs["head"])
    shutil.copytree(ship_runs["head"], tmp_path / "runs" / "fit")
    monkeypatch.chdir(tmp_path)
    sent = []
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: sent.append(kw))
    exec(compile(upload, "install.md#upload", "exec"), {})
    (call,) = sent
    folder = Path(call["folder_path"])
    assert call["repo_id"] == "your-org/ham10000-head" and (folder / "config.json").is_file()
    assert ModelCard.load(folder / "README.md").data.library_name == "skinfeat"
    scope: dict = {}
    exec(compile(load, "install.md#load", "exec"), scope)
    assert scope["model"].classes == skinfeat.load_model(ship_runs["head"]).classes
