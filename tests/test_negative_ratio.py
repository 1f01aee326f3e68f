"""--negative-ratio: per epoch all positives and a fresh draw of R x as many negatives, in the
head's one training loop; the class weights it reports weight the full data as 'balanced'."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from skinfeat.learn import head_batch
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.head_batch import fit_head
from skinfeat.learn.runconfig import ConfigError, RunConfig


def rare_positives(n: int = 2000, pos: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos).astype(np.int64)
    image = rng.normal(size=(n, 16)).astype(np.float32)
    image[:, 0] += 2.5 * y                       # learnable signal
    meta = rng.normal(size=(n, 3)).astype(np.float32)
    return image, meta, y


def test_each_epoch_takes_all_positives_and_a_fresh_draw_of_negatives(monkeypatch):
    train, val = rare_positives(), rare_positives(600, seed=1)
    epochs: list[np.ndarray] = []
    real = head_batch._Split.epoch

    def spy(self, cfg):
        real(self, cfg)
        epochs.append(self.current[2].numpy().copy())   # this epoch's row order

    monkeypatch.setattr(head_batch._Split, "epoch", spy)
    cfg = HeadConfig(epochs=15, lr=3e-3, negative_ratio=3.0, meta_dropout=0.0)
    res = fit_head(train, val, 2, cfg)
    y = train[2]
    n_pos = int(y.sum())
    assert len(epochs) == 15
    for order in epochs:
        assert len(order) == len(set(order)) == 4 * n_pos       # R + 1 times the positives
        assert set(np.flatnonzero(y == 1)) <= set(order)
        assert (y[order] == 0).sum() == 3 * n_pos
    assert set(epochs[0]) != set(epochs[1])                      # a fresh draw each epoch
    # It still trains, and its weights are the full data's balanced ones (up to scale).
    with torch.no_grad():
        proba = res.model.eval()(*(torch.as_tensor(a) for a in val[:2])).softmax(1)
    assert roc_auc_score(val[2], proba[:, 1].numpy()) > 0.8   # chance: 0.5
    w = res.class_weights
    assert w[1] / w[0] == pytest.approx((len(y) - n_pos) / n_pos)
    # Off (the default): every row, every epoch.
    epochs.clear()
    fit_head(train, val, 2, HeadConfig(epochs=1, meta_dropout=0.0))
    assert len(epochs[0]) == len(y)


def test_more_negatives_asked_than_there_are_is_every_row(monkeypatch):
    train, val = rare_positives(300, pos=0.3), rare_positives(100, pos=0.3, seed=1)
    sizes = []
    real = head_batch._Split.epoch
    monkeypatch.setattr(head_batch._Split, "epoch",
                        lambda self, cfg: (real(self, cfg), sizes.append(len(self.current[2]))))
    fit_head(train, val, 2, HeadConfig(epochs=1, negative_ratio=10.0))
    assert sizes == [300]


def test_refused_where_it_cannot_apply():
    image, meta, y = rare_positives(200)
    with pytest.raises(ValueError, match="negative_ratio is for binary tasks"):
        fit_head((image, meta, y % 3), (image, meta, y % 3), 3,
                 HeadConfig(epochs=1, negative_ratio=2.0))
    with pytest.raises(ConfigError, match="head.negative_ratio"):
        RunConfig.from_dict({"head": {"negative_ratio": 0}}, "run.toml").check()
    assert RunConfig.from_dict({"head": {"negative_ratio": 5}}).params.negative_ratio == 5.0
