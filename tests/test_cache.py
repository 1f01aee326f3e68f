"""Cache round trip, skip-on-rerun, identity refusal, lock, merge."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import TINY

from skinfeat.embed.cache import CacheError, CacheWriter, merge_caches, read_cache
from skinfeat.embed.extract import extract
from skinfeat.embed.weights import WeightSource


def test_layout_is_plain_hdf5(synth_cache, synth_table):
    with h5py.File(synth_cache, "r") as f:
        ids = f["image_id"].asstr()[()]
        emb = f["embedding"][()]
        assert emb.dtype == np.float32 and emb.shape == (len(synth_table), 64)
        assert sorted(ids) == sorted(synth_table["image_id"])
        for key in ("identity", "versions", "weights", "format"):
            assert key in f.attrs
    c = read_cache(synth_cache)
    assert c.identity["backbone"] == TINY and c.identity["weights"]["kind"] == "random"
    assert np.isfinite(c.embeddings).all() and c.embeddings.std(0).mean() > 0


def test_rerun_skips_cached_images(synth_cache, synth_table):
    before = read_cache(synth_cache)
    res = extract(synth_table, synth_cache, backbone=TINY, weights=WeightSource("random"),
                  precision="fp32", num_workers=0)
    assert res.embedded == 0 and res.skipped == len(synth_table)
    np.testing.assert_array_equal(read_cache(synth_cache).embeddings, before.embeddings)


@pytest.mark.slow   # end to end: an interrupted extract resumed
def test_partial_then_resume_equals_one_pass(synth_cache, synth_table, tmp_path):
    path = tmp_path / "c.h5"
    half = synth_table.iloc[: len(synth_table) // 2]
    kw = dict(backbone=TINY, weights=WeightSource("random"), precision="fp32", num_workers=0,
              layers="last", average_views=())   # synth_cache's layers and one view
    extract(half, path, **kw)
    res = extract(synth_table, path, **kw)
    assert res.skipped == len(half) and res.embedded == len(synth_table) - len(half)
    a, b = read_cache(path), read_cache(synth_cache)
    assert list(a.image_ids) == list(b.image_ids)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-6)


def test_other_identity_is_refused(synth_cache, synth_table):
    with pytest.raises(CacheError, match="another backbone, weights or preprocessing.*seed"):
        extract(synth_table, synth_cache, backbone=TINY, weights=WeightSource("random", seed=1),
                precision="fp32", num_workers=0)
    with pytest.raises(CacheError, match="precision"):
        extract(synth_table, synth_cache, backbone=TINY, weights=WeightSource("random"),
                precision="bf16", num_workers=0)


def test_second_writer_is_locked_out(tmp_path):
    ident = {"backbone": "x"}
    with (CacheWriter(tmp_path / "c.h5", ident),
          pytest.raises(CacheError, match="another skinfeat extract"),
          CacheWriter(tmp_path / "c.h5", ident)):
        pass


def test_merge_checks_identity(tmp_path):
    for name, ident, ids in (("a", {"b": 1}, ["x", "y"]), ("b", {"b": 1}, ["z"]),
                             ("c", {"b": 2}, ["w"])):
        with CacheWriter(tmp_path / f"{name}.h5", ident) as w:
            w.add(ids, np.ones((len(ids), 3), np.float32) * len(name))
            w.finalize()
    merged = merge_caches([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
    assert list(merged.image_ids) == ["x", "y", "z"]
    with pytest.raises(CacheError, match="identity differs"):
        merge_caches([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "m2.h5")


def test_external_cache_without_attributes_is_readable(tmp_path):
    path = tmp_path / "byo.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=["a", "b"], dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("embedding", data=np.eye(2, 5, dtype=np.float64))
    c = read_cache(path)
    assert c.identity == {} and c.embeddings.dtype == np.float32 and c.dim == 5


def test_not_a_cache_is_a_clear_error(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="unreadable"):
        read_cache(tmp_path / "x.h5")
