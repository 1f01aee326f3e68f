"""The grouping column and split kind are named for what they are (``group_id``, ``group``);
the older spellings (``lesion``, a ``lesion_id`` column in a run's splits.csv) still work."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from skinfeat.cli import main
from skinfeat.data.splits import assign_split, fold_ids, load_split, parse_split
from skinfeat.learn.cv import CVConfig
from skinfeat.learn.runconfig import RunConfig


def test_the_validated_table_names_its_groups_group_id(synth_table):
    assert "group_id" in synth_table.columns and "lesion_id" not in synth_table.columns


def test_lesion_is_the_older_spelling_of_group(synth_table):
    assert str(parse_split("lesion")) == "group"
    assert (fold_ids(synth_table, 3, "lesion", seed=1) ==
            fold_ids(synth_table, 3, "group", seed=1)).all()
    assert (assign_split(synth_table, "lesion", seed=2) ==
            assign_split(synth_table, "group", seed=2)).all()
    assert RunConfig.from_dict({"split": "lesion"}).split == "group"   # an older config.json
    cfg = CVConfig(split="lesion")
    assert cfg.check().split == "group"   # check() returns the checked value (configs are frozen)


def test_a_split_saved_before_the_rename_loads(synth_table, tmp_path):
    split = assign_split(synth_table, "group", seed=3)
    old = synth_table[["image_id", "group_id", "dx"]].rename(columns={"group_id": "lesion_id"})
    old.assign(split=split.to_numpy(), kind="lesion", seed=3).to_csv(tmp_path / "s.csv",
                                                                      index=False)
    again, kind, seed = load_split(synth_table, tmp_path / "s.csv")
    assert kind == "group" and seed == 3 and (again == split).all()


@pytest.mark.slow   # end to end (CLI or worker processes)
def test_the_cli_takes_both_spellings(synth_dir, synth_cache, tmp_path):
    for spelling in ("group", "lesion"):
        out = tmp_path / spelling
        r = CliRunner().invoke(main, ["fit-head", "--data", str(synth_dir), "--cache",
                                      str(synth_cache), "--out", str(out), "--split", spelling,
                                      "--max-epochs", "2"])
        assert r.exit_code == 0, r.output
        info = json.loads((out / "metrics.json").read_text())["info"]
        assert info["split"] == "group"
        assert set(pd.read_csv(out / "splits.csv")["kind"]) == {"group"}
