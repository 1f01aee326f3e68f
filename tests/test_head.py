"""The fusion head learns, keeps the reference architecture, and is deterministic."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.head import FusionHead, HeadConfig, fit_head, head_logits


def separable(n: int, seed: int, d: int = 32, m: int = 5, k: int = 7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = np.random.default_rng(99).normal(0, 3, (k, d))
    img = (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    meta = rng.normal(0, 1, (n, m)).astype(np.float32)
    return img, meta, y


def test_learns_a_separable_problem():
    train, val, test = separable(700, 0), separable(150, 1), separable(300, 2)
    res = fit_head(train, val, 7, HeadConfig(max_epochs=40))
    acc = (head_logits(res.model, test[0], test[1]).argmax(1) == test[2]).mean()
    assert acc > 0.9, acc
    assert res.history[0]["val_loss"] > min(h["val_loss"] for h in res.history)


def test_reference_architecture_shapes():
    head = FusionHead(768, 17)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["meta_mlp.0.weight"] == (32, 17) and shapes["meta_mlp.2.weight"] == (16, 32)
    assert shapes["classifier.1.weight"] == (64, 768 + 16)
    assert shapes["classifier.3.weight"] == (7, 64)
    assert head.image_dropout.p == 0.3 and head.classifier[0].p == 0.4


def test_early_stopping_restores_best_weights():
    train, val = separable(300, 0), separable(100, 1)
    res = fit_head(train, val, 7, HeadConfig(max_epochs=60, patience=3, lr=5e-2))
    best = min(h["val_loss"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_loss"] == best
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(
            res.model(torch.as_tensor(val[0]), torch.as_tensor(val[1])), torch.as_tensor(val[2]))
    assert abs(float(loss) - best) < 1e-5


def test_same_seed_same_weights():
    train, val = separable(200, 0), separable(60, 1)
    a = fit_head(train, val, 7, HeadConfig(max_epochs=5, seed=7)).model.state_dict()
    b = fit_head(train, val, 7, HeadConfig(max_epochs=5, seed=7)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
