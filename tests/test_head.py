"""The fusion head learns, keeps the reference architecture, and is deterministic."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.learn.head import FusionHead, HeadConfig, head_logits
from skinfeat.learn.head_batch import fit_head


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
    assert shapes["meta_mlp.fc1.weight"] == (32, 17) and shapes["meta_mlp.fc2.weight"] == (16, 32)
    assert shapes["fuse.fc.weight"] == (64, 768 + 16)
    assert shapes["classifier.weight"] == (7, 64)
    assert head.image_dropout.p == 0.3 and head.fuse.dropout.p == 0.4


def test_positional_keys_of_older_bundles_map_onto_the_named_layers():
    """Bundles up to 7c926aa keyed the layers by position ("meta_mlp.0.weight",
    "classifier.1.weight"): renamed once, they load strictly and give the same logits."""
    from skinfeat.learn.head import named_state

    torch.manual_seed(0)
    head = FusionHead(8, 3, 4, head="film").eval()
    old_names = {"meta_mlp.fc1.": "meta_mlp.0.", "meta_mlp.fc2.": "meta_mlp.2.",
                 "fuse.fc.": "classifier.1.", "classifier.": "classifier.3."}
    old = {}
    for key, value in head.state_dict().items():
        new = next((n for n in old_names if key.startswith(n)), None)
        old[old_names[new] + key[len(new):] if new else key] = value.clone()
    assert "classifier.3.weight" in old and "film.weight" in old
    fresh = FusionHead(8, 3, 4, head="film").eval()
    fresh.load_state_dict(named_state(old))      # strict: every key found, none left over
    image, meta = torch.randn(5, 8), torch.randn(5, 3)
    assert torch.equal(fresh(image, meta), head(image, meta))
    assert named_state(head.state_dict()).keys() == head.state_dict().keys()


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


def test_fit_leaves_the_callers_global_rng_alone():
    train, val = separable(100, 0), separable(40, 1)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    fit_head(train, val, 7, HeadConfig(max_epochs=2, seed=9))
    assert torch.equal(torch.rand(5), expected)


def test_stopping_criteria_restore_their_best_epoch():
    import pytest
    train, val = separable(300, 0), separable(100, 1)
    for stop_on in ("balanced_loss", "balanced_accuracy"):
        res = fit_head(train, val, 7, HeadConfig(max_epochs=30, patience=3, stop_on=stop_on))
        best = min(h["val_score"] for h in res.history)
        assert res.history[res.best_epoch - 1]["val_score"] == best
        assert all(h["val_score"] > best for h in res.history[:res.best_epoch - 1])
    with pytest.raises(ValueError, match="stop_on"):
        fit_head(train, val, 7, HeadConfig(stop_on="auc"))
    ref = HeadConfig.reference(seed=3)
    assert (ref.meta_dropout, ref.stop_on, ref.seed) == (0.0, "loss", 3)


def test_dropout_blanks_to_the_given_missing_values():
    from skinfeat.learn.head_batch import _blank_fields
    meta = torch.ones(2000, 5)
    out = _blank_fields(meta, [(0, 2, [0.0, 1.0]), (2, 5)], 0.25, torch.Generator().manual_seed(0))
    age_blank = (out[:, :2] == torch.tensor([0.0, 1.0])).all(1)
    assert 0.2 < float(age_blank.float().mean()) < 0.3
    assert set(out[:, 2:].sum(1).tolist()) == {0.0, 3.0}  # (lo, hi) alone: zeros, as before
    assert torch.equal(meta, torch.ones(2000, 5))          # the input is not modified
