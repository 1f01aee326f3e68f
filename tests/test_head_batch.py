"""The batched k-fold head trainer equals independent training (up to float rounding), its Adam
is torch's op for op, and the batched cv equals the sequential cv."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import skinfeat.learn.head as head
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.embed.cache import read_cache
from skinfeat.learn.cv import CVConfig, run_cv
from skinfeat.learn.head import HeadConfig, fit_head
from skinfeat.learn.optim import Adam
from skinfeat.learn.head_batch import fit_heads


def test_adam_is_torchs_including_stacked_models_out_of_step():
    torch.manual_seed(0)
    k = 3
    start = [torch.randn(k, 5, 4), torch.randn(k, 4)]
    theirs = [[p[i].clone().requires_grad_(True) for p in start] for i in range(k)]
    opts = [torch.optim.Adam(t, lr=1e-2, eps=1e-7, weight_decay=0.01, foreach=True)
            for t in theirs]
    ours = [p.clone().requires_grad_(True) for p in start]
    opt = Adam(ours, lr=1e-2, weight_decay=0.01, stacked=k)
    gen = torch.Generator().manual_seed(1)
    for it in range(25):
        active = [True] * k if it % 4 else [i != it % k for i in range(k)]  # some sit out
        grads = [torch.randn(p.shape, generator=gen) for p in start]
        for i in range(k):
            if active[i]:
                for t, g in zip(theirs[i], grads):
                    t.grad = g[i].clone()
                opts[i].step()
        for o, g in zip(ours, grads):
            o.grad = g.clone()
        opt.step(active)
    assert all(torch.equal(ours[j][i], theirs[i][j]) for j in range(2) for i in range(k))


def test_fit_head_trains_as_torchs_adam_would(monkeypatch):
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(n, 24)).astype(np.float32),
             rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 4, n)) for n in (200, 60)]
    cfg = HeadConfig(max_epochs=4, weight_decay=1e-3)
    ours = fit_head(*data, 4, cfg, [(0, 2), (2, 5)]).model.state_dict()

    def torch_adam(params, lr, eps, weight_decay):
        opt = torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, foreach=True)
        opt.zero_grad = lambda: torch.optim.Adam.zero_grad(opt, set_to_none=True)
        return opt

    monkeypatch.setattr(head, "Adam", torch_adam)
    ref = fit_head(*data, 4, cfg, [(0, 2), (2, 5)]).model.state_dict()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def _part(rng, n, meta_dim, views=False):
    shape = (n, 3, 32) if views else (n, 32)
    y = rng.integers(0, 5, n)
    image = rng.normal(size=shape).astype(np.float32)
    image[..., 0] += y.reshape(-1, *[1] * (image.ndim - 2))  # something to learn
    return image, rng.normal(size=(n, meta_dim)).astype(np.float32), y


@pytest.mark.parametrize("cfg, views", [
    (HeadConfig(max_epochs=12, patience=2), False),
    (HeadConfig(head="film", max_epochs=5, meta_dropout=0.3, meta_dropout_all=0.1), False),
    (HeadConfig(max_epochs=4, stop_on="loss", image_dropout=0.0, dense_width=16), True),
    (HeadConfig(inputs="image", epochs=3, class_weight="none"), False),
    (HeadConfig(inputs="meta", max_epochs=4, meta_width=8, meta_out=4), False)])
def test_batched_heads_equal_independent_fits(cfg, views):
    rng = np.random.default_rng(1)
    dims = (9, 7, 9)   # a fold whose encoder saw fewer categories has fewer columns
    parts = [(_part(rng, n, m, views), _part(rng, v, m, views))
             for n, v, m in zip((300, 333, 270), (80, 61, 90), dims)]
    fields = [[(0, 1), (1, 4), (4, m)] for m in dims]
    alone = [fit_head(t, v, 5, cfg, f) for (t, v), f in zip(parts, fields)]
    together = fit_heads(parts, 5, cfg, fields)
    for a, b in zip(alone, together):
        assert a.best_epoch == b.best_epoch and len(a.history) == len(b.history)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].shape == sb[k].shape
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5)
        np.testing.assert_allclose([h["val_loss"] for h in a.history],
                                   [h["val_loss"] for h in b.history], rtol=1e-5)


def test_splits_of_very_different_sizes():
    """A small split sits out most steps of each epoch (no update, no Adam step), with high
    dropout: still its own independent fit."""
    rng = np.random.default_rng(2)
    parts = [(_part(rng, n, 6), _part(rng, 30, 6)) for n in (240, 12)]
    cfg = HeadConfig(epochs=2, batch_size=4, dropout=0.9, dense_width=8)
    alone = [fit_head(t, v, 5, cfg) for t, v in parts]
    together = fit_heads(parts, 5, cfg)
    for a, b in zip(alone, together):
        for k, v in a.model.state_dict().items():
            torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=1e-5)


def test_batched_cv_equals_sequential_cv(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    cfg = CVConfig(folds=3, models=("head",), head=HeadConfig(max_epochs=6, patience=2),
                   lgbm=LGBMConfig(n_estimators=10))
    batched = run_cv(synth_table, contents, cfg)
    sequential = run_cv(synth_table, contents, replace(cfg, batched=False))
    assert len(batched["records"]) == len(sequential["records"]) == 3 * 3
    for a, b in zip(batched["records"], sequential["records"]):
        assert (a["fold"], a["inputs"], a["best_epoch"]) == (b["fold"], b["inputs"],
                                                             b["best_epoch"])
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), key
        assert a["metrics"]["confusion_matrix"] == b["metrics"]["confusion_matrix"]
