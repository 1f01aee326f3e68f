"""The head's faster dropout draws the very mask nn.Dropout draws, so fits stay bit-identical."""
from __future__ import annotations

import numpy as np
import torch

import skinfeat.learn.head as head
from skinfeat.learn.head import HeadConfig, MaskDropout, fit_head


def test_same_mask_and_generator_state_as_nn_dropout():
    x = torch.randn(64, 784, requires_grad=True)
    torch.manual_seed(3)
    ours = MaskDropout(0.4)(x)
    after_ours = torch.rand(4)
    torch.manual_seed(3)
    ref = torch.nn.Dropout(0.4)(x)
    after_ref = torch.rand(4)
    assert torch.equal(ours, ref) and torch.equal(after_ours, after_ref)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(g_ours, g_ref)
    assert torch.equal(MaskDropout(0.4).eval()(x), x)


def test_fit_is_bit_identical_to_nn_dropout(monkeypatch):
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(n, 48)).astype(np.float32),
             rng.normal(size=(n, 9)).astype(np.float32), rng.integers(0, 7, n)) for n in (300, 80)]
    cfg = HeadConfig(head="film", max_epochs=4, meta_dropout=0.2)
    ours = fit_head(*data, 7, cfg, [(0, 1), (1, 4), (4, 9)]).model.state_dict()
    monkeypatch.setattr(head, "MaskDropout", torch.nn.Dropout)
    ref = fit_head(*data, 7, cfg, [(0, 1), (1, 4), (4, 9)]).model.state_dict()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
