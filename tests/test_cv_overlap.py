"""cv's follow-up work while workers finish: the subgroup tables of a model and input set are
made as soon as its folds are in (``iter_cv``'s ``FoldsReady`` events), and equal the tables made
afterwards from the run's out-of-fold predictions."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from skinfeat.embed.cache import read_cache
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.cv import CVConfig, CVDone, FoldsReady, iter_cv
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.learn.train import as_dataset
from skinfeat.workflows.cv import SubgroupTables, cv_run

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

FAST = CVConfig(folds=3, models=("head",), inputs=("fused", "image", "meta"),
                recipe=RunConfig(params=HeadConfig(max_epochs=3)),
                params={"lgbm": LGBMConfig(n_estimators=20)})


def test_ready_events_hand_over_complete_models_before_the_end(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    handed: list = []
    events = list(iter_cv(synth_table, contents, replace(FAST, inputs=("image", "meta")),
                          jobs=2, ready=True))
    assert isinstance(events[-1], CVDone) and len(events) == 3   # the last: the result
    res = events[-1].result
    handed = [(e.model, e.inputs, e.oof) for e in events if isinstance(e, FoldsReady)]
    assert sorted((m, i) for m, i, _ in handed) == [("head", "image"), ("head", "meta")]
    oof = res.oof
    for model, inputs, part in handed:
        want = oof[(oof["model"] == model) & (oof["inputs"] == inputs)
                   & (oof["seed"] == res.config["seeds"][0])]
        pd.testing.assert_frame_equal(part.reset_index(drop=True), want.reset_index(drop=True))
    assert len({(m, i) for m, i, _ in handed}) == len(handed)   # each one once


def test_early_subgroup_tables_equal_late_ones(synth_table, synth_cache, tmp_path):
    # every field blank on a fifth of the rows: the fused model's fallback (the fold's image
    # model) scores them, so its early tables must wait for the image folds and combine them
    table = synth_table.copy()
    blank = table.index[::5]
    table.loc[blank, "age"] = float("nan")
    table.loc[blank, ["sex", "localization"]] = "unknown"
    res = cv_run(table, synth_cache, tmp_path / "cv", FAST, jobs=2)
    assert sum(r["fell_back"] for r in res.run.records if r["inputs"] == "fused") >= len(blank)
    late = SubgroupTables(as_dataset(table), read_cache(synth_cache), "cache", None,
                          tmp_path / "late")
    again = late.all(res.run)
    for model, by_inputs in res.subgroups.items():
        for inputs, result in by_inputs.items():
            assert json.dumps(result.to_dict(), sort_keys=True, default=str) == \
                json.dumps(again[model][inputs].to_dict(), sort_keys=True, default=str)
    assert set(res.subgroups["head"]) == {"fused", "image", "meta"}


def test_no_subgroups_no_hand_over(synth_table, synth_cache, tmp_path):
    res = cv_run(synth_table, synth_cache, tmp_path / "cv", replace(FAST, inputs=("image",)),
                 jobs=2, subgroups="none")
    assert res.subgroups == {} and not list(tmp_path.glob("cv/subgroups_*"))
