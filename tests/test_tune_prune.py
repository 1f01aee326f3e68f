"""tune's pruning: the batched fit reports each epoch (``head_batch.epoch_hook``), a trial the
pruner stops is recorded as pruned and the search goes on; ``--no-prune`` runs every trial to
its end."""
from __future__ import annotations

import json

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from conftest import run_cli as cli  # noqa: E402
from test_byo import write_foreign_cache  # noqa: E402

from skinfeat.learn.head import HeadConfig  # noqa: E402
from skinfeat.learn.head_batch import epoch_hook, fit_heads  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

FAST = ("--trials", "4", "--folds", "2", "--jobs", "1", "--max-epochs", "6", "--patience", "6")


def parts(k: int = 2, n: int = 120):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(k):
        x, m, y = (rng.standard_normal((n, 8), dtype=np.float32),
                   rng.standard_normal((n, 3), dtype=np.float32), rng.integers(0, 3, n))
        out.append(((x[:100], m[:100], y[:100]), (x[100:], m[100:], y[100:])))
    return out


def test_the_hook_sees_every_epoch_and_can_stop_the_fit():
    seen = []
    with epoch_hook(lambda epoch, best: seen.append((epoch, best))):
        fit_heads(parts(), 3, HeadConfig(epochs=4))
    assert [e for e, _ in seen] == [1, 2, 3, 4] and all(len(b) == 2 for _, b in seen)
    fit_heads(parts(), 3, HeadConfig(epochs=2))   # outside the block: no call
    assert len(seen) == 4

    class Stop(Exception):
        pass

    def stop(epoch, best):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop), epoch_hook(stop):
        fit_heads(parts(), 3, HeadConfig(epochs=10))


class OddPruner(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its third reported epoch."""

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        return trial.number % 2 == 1 and step is not None and step >= 3


@pytest.mark.parametrize("prune", [True, False])
def test_pruned_trials_are_recorded_and_the_search_goes_on(synth_dir, synth_table, tmp_path,
                                                           monkeypatch, prune):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: OddPruner())
    write_foreign_cache(tmp_path / "emb.h5", synth_table["image_id"],
                        synth_table["label"].to_numpy())
    out = tmp_path / "tune"
    cli("tune", "--data", synth_dir, "--cache", tmp_path / "emb.h5", "--out", out, *FAST,
        *([] if prune else ["--no-prune"]))
    res = json.loads((out / "tune_metrics.json").read_text())
    states = {h["number"]: h["state"] for h in res["history"]}
    assert len(states) == 4
    if prune:
        assert states == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE", 3: "PRUNED"}
        report = (out / "tune_report.md").read_text()
        assert "2 pruned" in report
        assert "- 2 finished trials, 2 pruned" in report   # a pruned trial is not finished
        assert res["best"]["number"] in (0, 2)
    else:
        assert set(states.values()) == {"COMPLETE"}
