"""The head's dropout masks: their own seeded stream, the right keep rate, one fit per seed."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.learn.head import DropoutNoise, HeadConfig, MaskDropout, fit_head


def test_keep_rate_and_scale():
    x = torch.ones(2000, 500)
    layer = MaskDropout(0.3)
    layer.noise = DropoutNoise(0)
    out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.002   # 1e6 draws: sd 0.0005
    assert torch.allclose(out[kept], torch.tensor(1 / 0.7))
    # Rows and columns are independent: no block of the mask repeats another.
    assert not torch.equal(kept[0], kept[1]) and not torch.equal(kept[:, 0], kept[:, 1])
    assert torch.equal(layer.eval()(x), x)


def test_masks_come_from_the_seed_not_the_global_generator():
    x = torch.randn(64, 784, requires_grad=True)
    a, b = MaskDropout(0.4), MaskDropout(0.4)
    a.noise, b.noise = DropoutNoise(3), DropoutNoise(3)
    torch.manual_seed(0)
    out_a = a(x)
    torch.manual_seed(1)
    out_b = b(x)
    assert torch.equal(out_a, out_b)
    grad, = torch.autograd.grad(out_a.sum(), x)
    assert torch.equal(grad == 0, out_a == 0)           # dropped elements get no gradient
    c = MaskDropout(0.4)
    c.noise = DropoutNoise(4)
    assert not torch.equal(c(x), out_a)


def test_without_noise_it_is_nn_dropout():
    x = torch.randn(64, 100)
    torch.manual_seed(3)
    ours = MaskDropout(0.4)(x)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Dropout(0.4)(x))


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
    assert all(m.noise is None for m in one.model.modules() if isinstance(m, MaskDropout))
