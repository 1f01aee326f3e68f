"""The head's dropout masks: their own seeded stream, the right keep rate, one fit per seed."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.learn.head import FusionHead, HeadConfig
from skinfeat.learn.head_batch import DropoutNoise, dropout_scale, fit_head


def test_keep_rate_and_independence():
    kept = DropoutNoise(0).keep(2000 * 500, 0.7).reshape(2000, 500)
    assert abs(kept.mean() - 0.7) < 0.002   # 1e6 draws: sd 0.0005
    # Rows and columns are independent: no block of the mask repeats another.
    assert not np.array_equal(kept[0], kept[1]) and not np.array_equal(kept[:, 0], kept[:, 1])
    assert np.array_equal(DropoutNoise(3).keep(1000, 0.6), DropoutNoise(3).keep(1000, 0.6))
    assert not np.array_equal(DropoutNoise(3).keep(1000, 0.6), DropoutNoise(4).keep(1000, 0.6))


def test_masks_replace_the_dropout_layers():
    torch.manual_seed(0)
    head = FusionHead(8, 3, 4).eval()
    image, meta = torch.ones(5, 8), torch.randn(5, 3)
    plain = head(image, meta)
    ones = (torch.ones(5, 8), torch.ones(5, head.fuse.fc.in_features))
    assert torch.equal(head(image, meta, ones), plain)      # all kept, scale 1: no change
    drop = torch.zeros(5, 8), ones[1]
    # the image dropped entirely: the logits see only the metadata branch
    no_image = head(torch.zeros(5, 8), meta)
    torch.testing.assert_close(head(image, meta, drop), no_image)
    assert torch.allclose(dropout_scale(0.7), torch.tensor(1 / 0.7))
    head.train()   # without masks, the layers are nn.Dropout
    torch.manual_seed(3)
    a = head(image, meta)
    torch.manual_seed(3)
    b = head(image, meta)
    assert torch.equal(a, b) and not torch.equal(a, plain)


def test_fit_depends_on_the_seed_only():
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(n, 48)).astype(np.float32),
             rng.normal(size=(n, 9)).astype(np.float32), rng.integers(0, 7, n)) for n in (300, 80)]
    fields = [(0, 1), (1, 4), (4, 9)]
    cfg = HeadConfig(head="film", max_epochs=4, meta_dropout=0.2)
    one = fit_head(*data, 7, cfg, fields)
    torch.manual_seed(123)   # the caller's global generator plays no part
    two = fit_head(*data, 7, cfg, fields)
    other = fit_head(*data, 7, HeadConfig(head="film", max_epochs=4, meta_dropout=0.2, seed=1),
                     fields)
    sa, sb, sc = (r.model.state_dict() for r in (one, two, other))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not one.model.training
