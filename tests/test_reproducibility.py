"""Same seed, same everything (fp32, one machine): split, embeddings, head weights, metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from skinfeat.embed.cache import read_cache
from skinfeat.embed.extract import extract
from skinfeat.embed.weights import WeightSource
from skinfeat.learn.runconfig import RunConfig
from skinfeat.workflows.fit import fit_run

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def test_two_extracts_give_identical_embeddings(synth_table, tmp_path):
    kw = dict(backbone=TINY, weights=WeightSource("random"), precision="fp32", image_size=64,
              num_workers=0)
    for name in ("a.h5", "b.h5"):
        extract(synth_table, tmp_path / name, **kw)
    a, b = read_cache(tmp_path / "a.h5"), read_cache(tmp_path / "b.h5")
    assert list(a.image_ids) == list(b.image_ids) and a.identity == b.identity
    np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_two_fit_runs_with_one_seed_are_identical(synth_table, synth_cache, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        fit_run(synth_table, synth_cache, out, RunConfig(seed=7))
    a, b = runs
    assert (a / "splits.csv").read_bytes() == (b / "splits.csv").read_bytes()
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    metrics = [json.loads((out / "metrics.json").read_text()) for out in runs]
    assert metrics[0]["model"] == metrics[1]["model"]
    assert metrics[0]["bootstrap_ci95"] == metrics[1]["bootstrap_ci95"]
    # the default model's members: the head's and the linear probe's weights, each identical
    for member in ("head", "linear"):
        wa = load_file(str(a / member / "model.safetensors"))
        wb = load_file(str(b / member / "model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert (a / member / "member.json").read_bytes() == \
            (b / member / "member.json").read_bytes()
    # Not vacuous: another seed gives another split and other weights.
    fit_run(synth_table, synth_cache, tmp_path / "c", RunConfig(seed=8))
    assert (tmp_path / "c" / "splits.csv").read_bytes() != (a / "splits.csv").read_bytes()
    wa = load_file(str(a / "head" / "model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "head" / "model.safetensors"))
    assert not torch.equal(wa["classifier.weight"], wc["classifier.weight"])
