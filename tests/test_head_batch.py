"""The head's one training loop: a single fit (a batch of one) equals a plain PyTorch loop
written out here, its Adam is torch's (fused) bit for bit, k heads trained together equal each
trained
alone (up to float rounding), and the batched cv equals the fold-by-fold cv."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import skinfeat.learn.head_batch as head_batch
from skinfeat.embed.cache import read_cache
from skinfeat.learn.cv import CVConfig, run_cv
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.head_batch import fit_head, fit_heads
from skinfeat.learn.optim import Adam
from skinfeat.learn.runconfig import RunConfig


def test_adam_is_torchs_including_stacked_models_out_of_step():
    torch.manual_seed(0)
    k = 3
    start = [torch.randn(k, 5, 4), torch.randn(k, 4)]
    theirs = [[p[i].clone().requires_grad_(True) for p in start] for i in range(k)]
    opts = [torch.optim.Adam(t, lr=1e-2, eps=1e-7, weight_decay=0.01, fused=True)
            for t in theirs]
    ours = [p.clone().requires_grad_(True) for p in start]
    opt = Adam(ours, lr=1e-2, weight_decay=0.01, stacked=k)
    gen = torch.Generator().manual_seed(1)
    for it in range(25):
        active = [True] * k if it % 4 else [i != it % k for i in range(k)]  # some sit out
        grads = [torch.randn(p.shape, generator=gen) for p in start]
        for i in range(k):
            if active[i]:
                for t, g in zip(theirs[i], grads, strict=False):
                    t.grad = g[i].clone()
                opts[i].step()
        for o, g in zip(ours, grads, strict=False):
            o.grad = g.clone()
        opt.step(active)
    # The fused kernel rounds its vector lanes and its tail differently, so a member updated
    # inside the stack equals it updated alone up to float rounding (a wrong step count or a
    # member updated while sitting out moves it by ~1e-3).
    assert all(torch.allclose(ours[j][i], theirs[i][j], rtol=1e-5, atol=1e-6)
               for j in range(2) for i in range(k))


def test_fit_head_trains_as_torchs_adam_would(monkeypatch):
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(n, 24)).astype(np.float32),
             rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 4, n)) for n in (200, 60)]
    cfg = HeadConfig(max_epochs=4, weight_decay=1e-3)
    ours = fit_head(*data, 4, cfg, [(0, 2), (2, 5)]).model.state_dict()

    def torch_adam(params, lr, eps, weight_decay, stacked):
        assert stacked == 1   # one member: always active, so torch's Adam is the reference
        opt = torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
        opt.zero_grad = lambda: torch.optim.Adam.zero_grad(opt, set_to_none=True)
        step = opt.step
        opt.step = lambda active=None: step()
        return opt

    monkeypatch.setattr(head_batch, "Adam", torch_adam)
    ref = fit_head(*data, 4, cfg, [(0, 2), (2, 5)]).model.state_dict()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def reference_fit(train, val, n_classes: int, cfg: HeadConfig, fields):
    """The loop written out plainly for one head (what fit_head did before it became the
    batched loop with one member): Keras-style weighted loss, masks from the fit's own stream
    (image layer, then classifier), early stopping with the best weights restored."""
    import copy

    from skinfeat.learn.head import FusionHead, _eval_view, balanced_class_weights
    from skinfeat.learn.head_batch import (
        DropoutNoise,
        _blank_fields,
        _pick_view,
        _val_score,
        dropout_scale,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        xi, xm, y = (torch.as_tensor(a) for a in train)
        vi, vm, vy = (torch.as_tensor(a) for a in val)
        xi, xm, vi, vm, y, vy = xi.float(), xm.float(), _eval_view(vi.float()), vm.float(), \
            y.long(), vy.long()
        model = FusionHead.from_config(xi.shape[-1], xm.shape[1], n_classes, cfg).eval()
        noise = DropoutNoise(cfg.seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-7,
                               weight_decay=cfg.weight_decay, fused=True)
        w = torch.as_tensor(balanced_class_weights(y.numpy(), n_classes), dtype=torch.float32)
        best, best_state, waited = np.inf, None, 0
        widths = (xi.shape[-1] if model.use_image else 0, model.fuse.fc.in_features)
        ps = (cfg.image_dropout if model.use_image else 0.0, cfg.dropout)
        for _epoch in range(cfg.n_epochs):
            img = _pick_view(xi, gen) if xi.ndim == 3 and cfg.view_augment else _eval_view(xi)
            meta = _blank_fields(xm, fields, cfg.meta_dropout, gen, cfg.meta_dropout_all) \
                if fields and (cfg.meta_dropout or cfg.meta_dropout_all) else xm
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), cfg.batch_size):
                take = order[start:start + cfg.batch_size]
                masks = tuple(
                    torch.from_numpy(noise.keep(len(take) * d, 1 - p)).view(len(take), d)
                    .float().mul_(dropout_scale(1 - p)) if d and 0 < p < 1 else None
                    for d, p in zip(widths, ps, strict=False))
                logits = model(img[take], meta[take], masks)
                loss = (F.cross_entropy(logits, y[take], reduction="none") * w[y[take]]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                score = _val_score(model(vi, vm), vy, n_classes, cfg.stop_on)
            if score < best:
                best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
        model.load_state_dict(best_state)
        return model


@pytest.mark.parametrize("cfg", [HeadConfig(max_epochs=8, patience=2),
                                 HeadConfig(head="film", max_epochs=4, meta_dropout=0.3,
                                            weight_decay=1e-3, stop_on="balanced_accuracy")])
def test_a_single_fit_is_the_plain_loop(cfg):
    rng = np.random.default_rng(4)
    train, val = _part(rng, 230, 6), _part(rng, 70, 6)
    fields = [(0, 2), (2, 6)]
    ours = fit_head(train, val, 5, cfg, fields).model.state_dict()
    ref = reference_fit(train, val, 5, cfg, fields).state_dict()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=1e-5)


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
             for n, v, m in zip((300, 333, 270), (80, 61, 90), dims, strict=False)]
    fields = [[(0, 1), (1, 4), (4, m)] for m in dims]
    alone = [fit_head(t, v, 5, cfg, f) for (t, v), f in zip(parts, fields, strict=False)]
    together = fit_heads(parts, 5, cfg, fields)
    for a, b in zip(alone, together, strict=False):
        assert a.best_epoch == b.best_epoch and len(a.history) == len(b.history)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].shape == sb[k].shape
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5)
        np.testing.assert_allclose([h["val_loss"] for h in a.history],
                                   [h["val_loss"] for h in b.history], rtol=1e-5)


@pytest.mark.parametrize("head", ["film", "reference"])
def test_wide_weights_laid_out_as_their_gradients_train_bit_identically(head, monkeypatch):
    """The stacked weights as wide as the embedding are stored transposed, so that autograd
    hands over their gradients without a copy (``head_batch._laid_out``): the same weights, bit
    for bit, as the contiguous layout, including after members stop early (their rows dropped
    from the stack) and with padded metadata columns."""
    rng = np.random.default_rng(3)
    dims = (9, 7, 9)
    parts = []
    for n, v, m in zip((300, 333, 270), (80, 61, 90), dims, strict=False):
        (ti, tm, ty), (vi, vm, vy) = _part(rng, n, m), _part(rng, v, m)
        wide = rng.normal(size=(n + v, 96)).astype(np.float32)   # 128-d embeddings
        parts.append(((np.hstack([ti, wide[:n]]), tm, ty), (np.hstack([vi, wide[n:]]), vm, vy)))
    fields = [[(0, 1), (1, 4), (4, m)] for m in dims]
    cfg = HeadConfig(head=head, max_epochs=12, patience=1, meta_dropout=0.3, lr=0.02,
                     stop_on="loss")
    transposed = []
    real = head_batch._laid_out

    def spy(stacked):
        out = real(stacked)
        transposed.append(not out.is_contiguous())
        return out

    monkeypatch.setattr(head_batch, "_laid_out", spy)
    ours = fit_heads(parts, 5, cfg, fields)
    assert any(transposed)   # the layout was in effect
    assert len({len(r.history) for r in ours}) > 1   # members stopped at different epochs
    monkeypatch.setattr(head_batch, "_laid_out", lambda stacked: stacked.contiguous())
    plain = fit_heads(parts, 5, cfg, fields)
    for a, b in zip(ours, plain, strict=False):
        assert a.best_epoch == b.best_epoch and a.history == b.history
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_splits_of_very_different_sizes():
    """A small split sits out most steps of each epoch (no update, no Adam step), with high
    dropout: still its own independent fit."""
    rng = np.random.default_rng(2)
    parts = [(_part(rng, n, 6), _part(rng, 30, 6)) for n in (240, 12)]
    cfg = HeadConfig(epochs=2, batch_size=4, dropout=0.9, dense_width=8)
    alone = [fit_head(t, v, 5, cfg) for t, v in parts]
    together = fit_heads(parts, 5, cfg)
    for a, b in zip(alone, together, strict=False):
        for k, v in a.model.state_dict().items():
            torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=1e-5)


def test_batched_cv_equals_sequential_cv(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    cfg = CVConfig(folds=3, models=("head",), recipe=RunConfig(
        params=HeadConfig(max_epochs=6, patience=2)))
    batched = run_cv(synth_table, contents, cfg)
    sequential = run_cv(synth_table, contents, replace(cfg, batched=False))
    assert len(batched.records) == len(sequential.records) == 3 * 3
    for a, b in zip(batched.records, sequential.records, strict=False):
        assert (a["fold"], a["inputs"], a["best_epoch"]) == (b["fold"], b["inputs"],
                                                             b["best_epoch"])
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-6), key
        assert a["metrics"]["confusion_matrix"] == b["metrics"]["confusion_matrix"]
