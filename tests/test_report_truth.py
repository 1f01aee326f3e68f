"""Reports and the model card state the run as it was: the model by its own name with what it
chose (the linear probe's C), the stopping rule of a fixed ``--epochs`` run, subgroup tables
only for columns the data has, and which fused source had random weights."""
from __future__ import annotations

import json

import pytest
from test_byo import write_foreign_cache


def fit(table, caches, out, **changes):
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run
    head = changes.pop("head", HeadConfig(seed=0, max_epochs=3))
    if changes.get("model", "head") == "head":
        changes["params"] = head
    fit_run(table, caches, out, RunConfig(seed=0, **changes))
    return (out / "report.md").read_text(), (out / "README.md").read_text(), \
        json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def linear_run(synth_table, synth_cache, tmp_path_factory):
    from skinfeat.learn.linear import LinearConfig
    # three Cs of the default grid, still chosen by the inner CV (the whole grid's largest Cs
    # run the solver to its iteration cap on 160 rows)
    return fit(synth_table, synth_cache, tmp_path_factory.mktemp("lin") / "run", model="linear",
               params=LinearConfig(cs=(1e-3, 1e-2, 1e-1)))


def test_linear_probe_report_names_the_model_and_its_chosen_c(linear_run):
    from skinfeat.learn.linear import C_GRID
    report, card, metrics = linear_run
    c = metrics["info"]["config"]["C"]
    assert c in C_GRID
    assert "lightgbm" not in report.lower() and "best epoch/round" not in report
    assert f"linear probe, inputs fused; C = {c:g}, chosen by" in report
    assert "no early stopping" in report and f"C = {c:g}" in card
    assert "early stopping on" not in card


def test_a_fixed_epochs_run_does_not_claim_early_stopping(synth_table, synth_cache, tmp_path):
    from skinfeat.learn.head import HeadConfig
    report, card, _ = fit(synth_table, synth_cache, tmp_path / "run",
                          head=HeadConfig(seed=0, epochs=2))
    assert "early stopping on" not in report and "early stopping on" not in card
    assert "no early stopping (a fixed --epochs 2)" in report
    assert "trained a fixed 2 epochs" in report


def test_an_early_stopped_head_states_its_best_epoch(synth_table, synth_cache, tmp_path):
    report, _, metrics = fit(synth_table, synth_cache, tmp_path / "run")
    best = metrics["info"]["best_epoch"]
    assert f"best epoch {best} of" in report and "early stopping on val" in report


def test_kaggle_layout_has_no_subgroup_table_for_an_absent_column(synth_table, synth_cache,
                                                                 tmp_path):
    assert "dataset" not in synth_table.columns      # the Kaggle layout has no such column
    out = tmp_path / "run"
    report, card, metrics = fit(synth_table, synth_cache, out)
    fields = [f["field"] for f in metrics["subgroups"]["fields"]]
    assert "dataset" not in fields and "dx_type" not in fields
    assert set(fields) == {"age", "sex", "localization"}          # the model's fields stay
    assert "| dataset |" not in report and "subgroups_dataset" not in card
    assert not list(out.rglob("*dataset*.png"))


def test_a_random_source_fused_with_a_real_one_is_named(synth_table, synth_cache, tmp_path):
    real = tmp_path / "real.h5"
    write_foreign_cache(real, synth_table["image_id"], synth_table["label"].to_numpy())
    report, card, _ = fit(synth_table, [real, synth_cache], tmp_path / "run")
    banner = next(line for line in report.splitlines() if "RANDOM" in line)
    assert "1 of 2 fused sources" in banner and "synth.h5" in banner
    assert "real.h5" not in banner
    assert "The backbone had random weights" not in card and "synth.h5" in card
