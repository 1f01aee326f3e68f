"""Hostile bring-your-own and fused caches: every malformed HDF5 cache is refused by every reader
(cache info / merge, fit-head, cv, tune, predict, evaluate) with one line naming the file and the
dataset or attribute, and earlier artifacts stay byte-identical; fused caches in another order
than in training are refused by predict and evaluate, with where each must go. And what must
keep working: a valid foreign cache trains and predicts, fused caches in the right order
predict identically, a merge of identical overlapping ids keeps each once."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hostile import ok, refused

from skinfeat.deploy.model import Model
from skinfeat.embed.cache import (
    CacheContents,
    CacheError,
    fuse_caches,
    merge_caches,
    read_cache,
)
from skinfeat.embed.sources import check_sources

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input

DIM = 16
FIT = ("--epochs", "2", "--seed", "1")


def write(path: Path, ids, emb, views=None, **attrs) -> Path:
    """A cache as a user's own h5py script writes it (README "Bring your own embeddings")."""
    with h5py.File(path, "w") as f:
        if np.asarray(ids).dtype.kind in "fiu":    # numbers as ids, as a careless script might
            f.create_dataset("image_id", data=np.asarray(ids))
        else:
            f.create_dataset("image_id", data=np.asarray(ids, dtype=object),
                             dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=emb)
        if views is not None:
            f.create_dataset("view_embedding", data=views)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def encoder_like(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Embeddings with their own per-dimension offsets, as a real encoder's have."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=dim) * 2 + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def byo(synth_dir, tmp_path_factory):
    """A valid foreign cache and its run; two identity-bearing caches and their fused run; two
    plain caches of one width and their fused run; a rows CSV for predict."""
    root = tmp_path_factory.mktemp("hostile_caches")
    table = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    ids = table["image_id"].tolist()
    table[["image_id", "age", "sex"]].to_csv(root / "rows.csv", index=False)
    good = write(root / "good.h5", ids, encoder_like(len(ids), 0))
    ok("fit-head", "--data", synth_dir, "--cache", good, "--out", root / "run", *FIT)
    a = write(root / "a.h5", ids, encoder_like(len(ids), 1),
              identity=json.dumps({"backbone": "enc-a"}))
    b = write(root / "b.h5", ids, encoder_like(len(ids), 2),
              identity=json.dumps({"backbone": "enc-b"}))
    ok("fit-head", "--data", synth_dir, "--cache", a, "--cache", b, "--out", root / "fused", *FIT)
    pa = write(root / "plain_a.h5", ids, encoder_like(len(ids), 3))
    pb = write(root / "plain_b.h5", ids, encoder_like(len(ids), 4))
    ok("fit-head", "--data", synth_dir, "--cache", pa, "--cache", pb, "--out", root / "plain",
       *FIT)
    return {"root": root, "data": synth_dir, "ids": ids, "good": good, "run": root / "run",
            "a": a, "b": b, "fused": root / "fused", "pa": pa, "pb": pb,
            "plain": root / "plain", "rows": root / "rows.csv"}


def _dup_differ(p, ids, e):
    return write(p, ids + ids[:3], np.concatenate([e, e[:3] + 1]))


def _dup_same(p, ids, e):
    return write(p, ids + ids[:2], np.concatenate([e, e[:2]]))


def _nan(p, ids, e):
    e = e.copy()
    e[4, 2] = np.nan
    return write(p, ids, e)


def _overflow(p, ids, e):
    e = e.astype(np.float64)
    e[7, 0] = 1e300                     # finite in the file, inf as float32
    return write(p, ids, e)


def _inf_view(p, ids, e):
    views = np.repeat(e[:, None], 2, axis=1)
    views[5, 1, 3] = np.inf
    return write(p, ids, e, views=views)


# name -> (how to write it, what the error line must also hold besides the file name)
MALFORMED = {
    "duplicate_ids_differ": (_dup_differ, ["occur more than once", "different embeddings",
                                           "3 image id(s)"]),
    "duplicate_ids_same": (_dup_same, ["occur more than once", "same embedding"]),
    "zero_width": (lambda p, ids, e: write(p, ids, np.zeros((len(ids), 0), np.float32)),
                   ["'embedding'", "width 0"]),
    "rows_differ": (lambda p, ids, e: write(p, ids, e[:-1]), ["'embedding'", "one row per id"]),
    "embedding_1d": (lambda p, ids, e: write(p, ids, e[:, 0]), ["'embedding'", "(N, D)"]),
    "ids_2d": (lambda p, ids, e: write(p, np.array(ids, dtype=object).reshape(-1, 2), e),
               ["'image_id'", "1-D"]),
    "ids_float": (lambda p, ids, e: write(p, np.arange(len(ids), dtype=np.float64), e),
                  ["'image_id'", "strings"]),
    "empty_id": (lambda p, ids, e: write(p, [""] + ids[1:], e), ["'image_id'", "1 empty id"]),
    "embedding_text": (lambda p, ids, e: write(p, ids, np.array([["x"] * DIM] * len(ids), "S1")),
                       ["'embedding'", "must hold numbers"]),
    "view_rows": (lambda p, ids, e: write(p, ids, e, views=np.zeros((5, 1, DIM), np.float32)),
                  ["'view_embedding'", "(5, 1, 16)"]),
    "view_width": (lambda p, ids, e: write(p, ids, e,
                                           views=np.zeros((len(ids), 1, 8), np.float32)),
                   ["'view_embedding'", "width"]),
    "nan": (_nan, ["'embedding'", "NaN or inf", "1 row(s)"]),
    "overflow": (_overflow, ["'embedding'", "NaN or inf"]),
    "inf_view": (_inf_view, ["'view_embedding'", "NaN or inf"]),
    "identity_not_json": (lambda p, ids, e: write(p, ids, e, identity="backbone: mine"),
                          ["attribute 'identity'", "not valid JSON"]),
    "identity_not_object": (lambda p, ids, e: write(p, ids, e, identity="[1, 2]"),
                            ["attribute 'identity'", "JSON object"]),
    "identity_bad_views": (lambda p, ids, e: write(p, ids, e, identity='{"views": "flip"}'),
                           ["attribute 'identity'", "'views'"]),
    "failures_not_json": (lambda p, ids, e: write(p, ids, e, failures="none"),
                          ["attribute 'failures'", "not valid JSON"]),
    "failures_bad_shape": (lambda p, ids, e: write(p, ids, e, failures="[1, 2]"),
                           ["attribute 'failures'", "[image_id, reason] pairs"]),
}


def malformed(byo, name: str) -> Path:
    make, _ = MALFORMED[name]
    return make(byo["root"] / f"bad {name}.h5", list(byo["ids"]),
                encoder_like(len(byo["ids"]), 0))


def readers(byo, bad: Path, tmp: Path) -> dict:
    """Every command that reads a cache, pointed at ``bad``: (args, folders/files to protect).
    Outputs go to existing artifacts (copies), which must survive byte-identical."""
    root, data = byo["root"], byo["data"]
    run = tmp / "run"
    shutil.copytree(byo["run"], run)
    out = tmp / "ev"
    out.mkdir()
    (out / "evaluate_metrics.json").write_text("{}")
    preds = tmp / "preds.csv"
    preds.write_text("image_id\n")
    merged = tmp / "merged.h5"
    shutil.copy(byo["good"], merged)
    keep = [bad, byo["good"], run]
    return {
        "cache-info": (["cache", "info", bad], keep),
        "cache-merge": (["cache", "merge", byo["good"], bad, "--out", merged], keep + [merged]),
        "fit-head": (["fit-head", "--data", data, "--cache", bad, "--out", run, *FIT], keep),
        "cv": (["cv", "--data", data, "--cache", bad, "--out", run, "--folds", "3", "--epochs",
                "2", "--inputs", "fused", "--jobs", "1"], keep),
        "predict": (["predict", "--model", run, "--csv", root / "rows.csv", "--cache", bad,
                     "--output", preds], keep + [preds]),
        "evaluate": (["evaluate", "--model", run, "--data", data, "--cache", bad, "--out", out,
                      "--include-seen"], keep + [out]),
    }


@pytest.mark.parametrize("command", ["cache-info", "cache-merge", "fit-head", "cv", "predict",
                                     "evaluate"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_cache_is_refused_by_every_reader(byo, tmp_path, name, command):
    bad = malformed(byo, name)
    args, protect = readers(byo, bad, tmp_path)[command]
    line = refused(args, bad.name, *MALFORMED[name][1], protect=protect)
    assert line.startswith(f"Error: {bad}:")            # the file leads the line


def test_duplicate_ids_name_the_first_ids(byo, tmp_path):
    bad = malformed(byo, "duplicate_ids_differ")
    refused(["cache", "info", bad], bad.name, *byo["ids"][:3], protect=[bad])


def test_nan_names_the_id(byo, tmp_path):
    bad = malformed(byo, "nan")
    refused(["fit-head", "--data", byo["data"], "--cache", bad, "--out", tmp_path / "r"],
            bad.name, byo["ids"][4], protect=[bad])


def test_tune_refuses_a_malformed_cache(byo, tmp_path):
    bad = malformed(byo, "zero_width")
    refused(["tune", "--data", byo["data"], "--cache", bad, "--out", tmp_path / "t",
             "--trials", "1", "--folds", "2"], bad.name, "width 0", protect=[bad])


def test_merge_refuses_one_id_with_two_embeddings(byo, tmp_path):
    ids, e = byo["ids"], encoder_like(len(byo["ids"]), 0)
    one = write(tmp_path / "one.h5", ids[:10], e[:10])
    other = e[5:15].copy()
    other[1] += 0.5                                   # ids[6] differs, ids[5], 7..9 agree
    two = write(tmp_path / "two.h5", ids[5:15], other)
    out = tmp_path / "m.h5"
    refused(["cache", "merge", one, two, "--out", out], "two.h5", "one.h5", ids[6],
            "1 image id(s)", protect=[one, two])
    assert not out.exists()


def test_merge_refuses_caches_of_other_widths(byo, tmp_path):
    ids = byo["ids"]
    one = write(tmp_path / "one.h5", ids[:10], encoder_like(10, 0))
    two = write(tmp_path / "two.h5", ids[10:20], encoder_like(10, 0, dim=8))
    refused(["cache", "merge", one, two, "--out", tmp_path / "m.h5"], "two.h5", "one.h5",
            "8-d", protect=[one, two])


# ---------------------------------------------------------------- fused sources, in order
def predict_args(run, rows, caches, output):
    return ["predict", "--model", run, "--csv", rows, *[x for c in caches for x in ("--cache", c)],
            "--output", output]


def evaluate_args(run, data, caches, out):
    return ["evaluate", "--model", run, "--data", data,
            *[x for c in caches for x in ("--cache", c)], "--out", out, "--include-seen"]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_swapped_fused_caches_are_refused(byo, tmp_path, command):
    """Caches with identities: the swap is named from them, with where each must go."""
    out = tmp_path / "out.csv" if command == "predict" else tmp_path / "ev"
    args = predict_args(byo["fused"], byo["rows"], [byo["b"], byo["a"]], out) \
        if command == "predict" else evaluate_args(byo["fused"], byo["data"],
                                                   [byo["b"], byo["a"]], out)
    refused(args, "b.h5", "given as the first --cache", "source 2", "must come second",
            "1. enc-a", "2. enc-b", protect=[byo["a"], byo["b"], byo["fused"]])
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_swapped_plain_caches_of_one_width_are_refused_by_profile(byo, tmp_path, command):
    """No identity, one width: the value profiles recorded at training decide. The copies hold
    other rows and have other names, so neither the content nor the file name is the same."""
    part = list(range(0, len(byo["ids"]), 3))
    copies = []
    for key, name in (("pb", "held_b.h5"), ("pa", "held_a.h5")):
        c = read_cache(byo[key])
        copies.append(write(tmp_path / name, c.image_ids[part], c.embeddings[part]))
    out = tmp_path / "out.csv" if command == "predict" else tmp_path / "ev"
    args = predict_args(byo["plain"], byo["rows"], copies, out) if command == "predict" \
        else evaluate_args(byo["plain"], byo["data"], copies, out)
    refused(args, "held_b.h5", "profile correlation", "must come second",
            "trained on plain_a.h5", protect=[*copies, byo["plain"]])


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_wrong_number_of_caches_is_refused(byo, tmp_path, command):
    out = tmp_path / "out.csv" if command == "predict" else tmp_path / "ev"
    for run, caches, want in ((byo["fused"], [byo["a"]], "trained on 2"),
                              (byo["run"], [byo["good"], byo["good"]], "trained on 1")):
        args = predict_args(run, byo["rows"], caches, out) if command == "predict" \
            else evaluate_args(run, byo["data"], caches, out)
        refused(args, Path(caches[0]).name, want, "one --cache per source",
                protect=[run, *caches])


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_single_cache_of_another_encoder_or_width_is_refused(byo, tmp_path, command):
    ids = byo["ids"]
    same_width = write(tmp_path / "other encoder.h5", ids, encoder_like(len(ids), 9),
                       identity=json.dumps({"backbone": "enc-z"}))
    narrow = write(tmp_path / "narrow.h5", ids, encoder_like(len(ids), 0, dim=8))
    out = tmp_path / "out.csv" if command == "predict" else tmp_path / "ev"
    for cache, needles in ((same_width, ["another encoder", '"enc-z" here']),
                           (narrow, ["8-d embeddings", "takes 16-d"])):
        args = predict_args(byo["run"], byo["rows"], [cache], out) if command == "predict" \
            else evaluate_args(byo["run"], byo["data"], [cache], out)
        refused(args, cache.name, *needles, protect=[byo["run"], cache])


def test_fused_source_of_another_encoder_names_its_position(byo, tmp_path):
    c = write(tmp_path / "c.h5", byo["ids"], encoder_like(len(byo["ids"]), 5),
              identity=json.dumps({"backbone": "enc-c"}))
    refused(predict_args(byo["fused"], byo["rows"], [byo["a"], c], tmp_path / "o.csv"),
            "c.h5", "source 2", "enc-b", protect=[byo["fused"], c])


# ---------------------------------------------------------------- what keeps working
def test_a_valid_foreign_cache_with_views_and_attributes_trains_and_predicts(byo, tmp_path):
    """Views, an identity of the user's own, failures as a JSON object: accepted, trained with
    --tta, predicted; cache info lists the failures."""
    ids = byo["ids"]
    e = encoder_like(len(ids), 0)
    views = np.stack([e + 0.01, e - 0.01], axis=1)
    cache = write(tmp_path / "mine.h5", ids[1:], e[1:], views=views[1:],
                  identity=json.dumps({"model": "derm-encoder v2", "views": ["flip", "rot90"]}),
                  failures=json.dumps({ids[0]: "corrupt file"}))
    r = ok("cache", "info", cache)
    assert "views: flip, rot90" in r.output and f"{ids[0]}: corrupt file" in r.output
    run = tmp_path / "run"
    ok("fit-head", "--data", byo["data"], "--cache", cache, "--out", run, "--tta", *FIT)
    info = json.loads((run / "metrics.json").read_text())["info"]
    assert info["without_embedding"] == 1 and info["embed_dim"] == DIM
    out = tmp_path / "p.csv"
    ok(*predict_args(run, byo["rows"], [cache], out))
    preds = pd.read_csv(out)
    assert (preds["error"].notna()).sum() == 1                  # ids[0] has no embedding
    proba = preds.filter(like="p_").dropna().to_numpy()
    assert len(proba) == len(ids) - 1 and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_fused_caches_in_the_right_order_predict_identically(byo, tmp_path):
    """The CLI's probabilities equal the model applied to the two caches joined by hand in
    training order, and copies with other names and fewer rows give the same rows."""
    p = Model(byo["fused"])
    table = pd.read_csv(byo["rows"], dtype=str)
    a, b = read_cache(byo["a"]), read_cache(byo["b"])
    joined = np.concatenate([a.embeddings[a.rows_for(table["image_id"])],
                             b.embeddings[b.rows_for(table["image_id"])]], axis=1)
    expect = p.calibrate(p.logits(joined, table))
    out = tmp_path / "p.csv"
    ok(*predict_args(byo["fused"], byo["rows"], [byo["a"], byo["b"]], out))
    got = pd.read_csv(out).filter(like="p_").to_numpy()
    np.testing.assert_allclose(got, expect, atol=1e-6)          # the CSV rounds to 6 digits
    part = np.arange(0, len(table), 4)
    copies = [write(tmp_path / f"test_{k}.h5", c.image_ids[part], c.embeddings[part],
                    identity=c.attrs["identity"]) for k, c in (("a", a), ("b", b))]
    sub = tmp_path / "sub.csv"
    table.iloc[part].to_csv(sub, index=False)
    ok(*predict_args(byo["fused"], sub, copies, tmp_path / "q.csv"))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "q.csv").filter(like="p_").to_numpy(),
                               got[part], atol=1e-6)
    ev = tmp_path / "ev"
    ok(*evaluate_args(byo["fused"], byo["data"], [byo["a"], byo["b"]], ev))
    assert json.loads((ev / "evaluate_metrics.json").read_text())["info"]["n"] == len(table)


def test_plain_caches_in_the_right_order_pass_the_profile_check(byo, tmp_path, caplog):
    config = json.loads((byo["plain"] / "config.json").read_text())["backbone"]
    assert [len(x) for x in config["profiles"]] == [DIM, DIM]    # recorded at training
    assert "profiles" not in json.loads((byo["fused"] / "config.json").read_text())["backbone"]
    part = list(range(1, len(byo["ids"]), 3))
    copies = [write(tmp_path / f"held_{k}.h5", c.image_ids[part], c.embeddings[part])
              for k, c in (("a", read_cache(byo["pa"])), ("b", read_cache(byo["pb"])))]
    with caplog.at_level(logging.INFO, logger="skinfeat"):      # -v: the CLI logs INFO
        ok("-v", *predict_args(byo["plain"], byo["rows"], copies, tmp_path / "p.csv"))
    assert "order verified by value profile" in caplog.text
    assert "cannot be checked" not in caplog.text


def test_flat_profiles_fall_back_to_file_names_then_a_warning(byo, synth_dir, tmp_path,
                                                                caplog):
    """Features standardised per dimension carry no profile: held-out copies named like the
    training files but swapped are refused by name; other names in an order that nothing
    decides get a warning, not a silent pass."""
    ids = np.asarray(byo["ids"])

    def flat(path, rows, seed):
        e = np.random.default_rng(seed).normal(size=(len(ids), DIM))[rows]
        return write(path, ids[rows], ((e - e.mean(0)) / e.std(0)).astype(np.float32))

    every = np.arange(len(ids))
    sa, sb = flat(tmp_path / "sa.h5", every, 1), flat(tmp_path / "sb.h5", every, 2)
    run = tmp_path / "run"
    ok("fit-head", "--data", synth_dir, "--cache", sa, "--cache", sb, "--out", run, *FIT)
    (tmp_path / "held").mkdir()
    part = every[::2]
    ha, hb = flat(tmp_path / "held/sa.h5", part, 1), flat(tmp_path / "held/sb.h5", part, 2)
    refused(predict_args(run, byo["rows"], [hb, ha], tmp_path / "q.csv"), str(hb),
            "trained with sb.h5 as source 2", "must come second", protect=[ha, hb, run])
    other = [shutil.copy(hb, tmp_path / "held/x.h5"), shutil.copy(ha, tmp_path / "held/y.h5")]
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        ok(*predict_args(run, byo["rows"], other, tmp_path / "p.csv"))
    assert "their order cannot be checked" in caplog.text


def test_a_cache_of_other_stage_one_options_is_refused_with_the_flags_that_match():
    """Issue 29 changed extract's defaults (--layers last3, --average-views all): a model
    trained on a cache of the earlier defaults, given a cache of today's, is told how to
    extract one that matches."""
    trained = {"backbone": "enc", "weights": {"kind": "random"}, "precision": "fp32"}
    today = CacheContents(np.array(["x"], dtype=object), np.ones((1, 4), np.float32),
                          identity={**trained, "layers": "last3",
                                    "average_views": ["flip", "rot90", "rot180", "rot270"]})
    with pytest.raises(CacheError, match="another encoder") as err:
        check_sources(trained, 4, ["new.h5"], [today])
    assert str(err.value).endswith("skinfeat extract ... --layers last --average-views none")
    wider = CacheContents(today.image_ids, np.ones((1, 8), np.float32), identity=today.identity)
    with pytest.raises(CacheError, match="8-d embeddings, but the model takes 4-d") as err:
        check_sources(trained, 4, ["new.h5"], [wider])    # last3 is wider: the width says so
    assert str(err.value).endswith("--layers last --average-views none")
    other = CacheContents(today.image_ids, today.embeddings,
                          identity={**trained, "backbone": "enc-2"})
    with pytest.raises(CacheError) as err:
        check_sources(trained, 4, ["o.h5"], [other])
    assert "skinfeat extract" not in str(err.value)      # another encoder: no flags can help


def test_check_sources_warns_on_rounding_and_refuses_nothing_else(caplog):
    ident = {"backbone": "enc", "weights": {"kind": "random"}, "precision": "fp32",
             "views": [], "shard": "0/2"}
    part = CacheContents(np.array(["x", "y"], dtype=object), np.ones((2, 4), np.float32),
                         identity={**ident, "precision": "bf16", "views": ["flip"]})
    part.identity.pop("shard")
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        check_sources(ident, 4, ["c.h5"], [part])
    assert "another rounding" in caplog.text and "bf16" in caplog.text
    # views averaged from the decoded image (before the squashed tensor was turned): the same
    # encoder and views, rounded otherwise
    averaged = {**ident, "average_views": ["flip"], "view_transform": "image-before-resize"}
    turned = CacheContents(np.array(["x"], dtype=object), np.ones((1, 4), np.float32),
                           identity={**averaged, "view_transform": "squashed-tensor-turned"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        check_sources(averaged, 4, ["t.h5"], [turned])
    assert "another rounding" in caplog.text and "squashed-tensor-turned" in caplog.text


def test_merge_keeps_identical_overlapping_ids_once(tmp_path):
    ids = [f"img{i:02d}" for i in range(12)]
    e = encoder_like(12, 0)
    near = e[4:12] + 1e-7                                      # float rounding of one identity
    ident = json.dumps({"backbone": "enc"})
    one = write(tmp_path / "one.h5", ids[:8], e[:8], identity=ident,
                failures=json.dumps([["img99", "unreadable"]]))
    two = write(tmp_path / "two.h5", ids[4:], near, identity=ident)
    merged = merge_caches([one, two], tmp_path / "m.h5")
    assert list(merged.image_ids) == ids
    back = read_cache(tmp_path / "m.h5")
    np.testing.assert_array_equal(back.embeddings[:8], e[:8])   # the first input's rows
    np.testing.assert_array_equal(back.embeddings[8:], near[4:])
    assert back.failures == {"img99": "unreadable"}
    r = ok("cache", "merge", one, two, "--out", tmp_path / "m2.h5")
    assert "12 embeddings merged from 2 file(s)" in r.output


def test_fusing_caches_with_other_numbers_of_views_keeps_none(caplog):
    ids = np.array(["x", "y", "z"], dtype=object)
    e = np.ones((3, 4), np.float32)
    one = CacheContents(ids, e, np.ones((3, 1, 4), np.float32), source="one.h5")
    two = CacheContents(ids, e * 2, np.ones((3, 2, 4), np.float32), source="two.h5")
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        fused = fuse_caches([one, two], ["one.h5", "two.h5"])
    assert fused.embeddings.shape == (3, 8) and fused.view_embeddings is None
    assert "different views" in caplog.text and fused.identity["dims"] == [4, 4]
