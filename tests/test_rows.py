"""Split sides as Rows of the one embedding array: the head and LightGBM trained on Rows equal
the same fits on fancy-indexed copies, a float16 array trains as its float32 widening would, and
a pass in chunks equals the pass over the whole side."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.learn.baseline import LGBMConfig, fit_lgbm
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.head_batch import fit_heads
from skinfeat.learn.rows import Rows, chunked


def data(n: int = 300, d: int = 16, m: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    image = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
    meta = rng.normal(size=(n, m)).astype(np.float32)
    idx = rng.permutation(n)
    return image, meta, y, idx[:200], idx[200:]


def sides(image, meta, y, tr, va, rows: bool):
    cut = (lambda i: Rows(image, i)) if rows else (lambda i: image[i])
    return (cut(tr), meta[tr], y[tr]), (cut(va), meta[va], y[va])


CFG = HeadConfig(max_epochs=3, seed=1, batch_size=32)


def test_head_on_rows_equals_head_on_copies():
    image, meta, y, tr, va = data()
    copies = fit_heads([sides(image, meta, y, tr, va, False)], 3, CFG)[0].model.state_dict()
    rows = fit_heads([sides(image, meta, y, tr, va, True)], 3, CFG)[0].model.state_dict()
    assert all(torch.equal(copies[k], rows[k]) for k in copies)


def test_float16_array_trains_as_its_float32_widening():
    image, meta, y, tr, va = data()
    half = image.astype(np.float16)
    want = fit_heads([sides(half.astype(np.float32), meta, y, tr, va, False)], 3, CFG)[0]
    got = fit_heads([sides(half, meta, y, tr, va, True)], 3, CFG)[0]
    a, b = want.model.state_dict(), got.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Rows(half, tr).gather().dtype == np.float32


def test_lgbm_on_rows_equals_lgbm_on_copies():
    image, meta, y, tr, va = data()
    cfg = LGBMConfig(pca_dim=8, n_estimators=20, num_threads=1)
    a = fit_lgbm(*sides(image, meta, y, tr, va, False), 3, cfg)
    b = fit_lgbm(*sides(image, meta, y, tr, va, True), 3, cfg)
    np.testing.assert_array_equal(a.predict_proba(image[va], meta[va]),
                                  b.predict_proba(image[va], meta[va]))


def test_chunks_and_views():
    image, meta, _, tr, _ = data()
    side = Rows(image, tr)
    whole = np.asarray(side)
    assert side.shape == whole.shape == (200, 16) and len(side) == 200
    np.testing.assert_array_equal(whole, image[tr])
    got = chunked(lambda i, m: i.sum(1, keepdims=True) + m[:, :1], side, meta[tr], size=64)
    np.testing.assert_allclose(got, whole.sum(1, keepdims=True) + meta[tr][:, :1], rtol=1e-6)
    views = np.stack([image, -image], axis=1)        # (N, 2, D)
    side3 = Rows(views, tr)
    assert side3.ndim == 3 and side3.shape == (200, 2, 16)
    np.testing.assert_array_equal(np.asarray(side3[:, 1]), -image[tr])
