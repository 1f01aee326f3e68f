"""skinfeat audit: near-duplicates found and distinct rows left alone, groups merged before the
split, flipped labels ranked, outliers, and each bad input refused in one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import EXTRACT_TINY, run_cli
from PIL import Image

from skinfeat.data.duplicate_groups import merge_duplicate_groups, merge_groups
from skinfeat.data.splits import fold_ids
from skinfeat.embed.cache import CacheContents, write_cache
from skinfeat.evaluate.audit_search import (
    approximate_recall,
    normalise,
    outlier_scores,
    scan,
    scan_approximate,
)


def planted(n=400, dim=48, copies=12, seed=0):
    """Distinct rows (a shared component plus their own, like pooled network features) and
    ``copies`` noisy copies of the first rows, appended: row n + c copies row c."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    x = 0.6 * common + rng.normal(size=(n, dim))
    dup = x[:copies] + 0.03 * rng.normal(size=(copies, dim))
    return np.vstack([x, dup]).astype(np.float32)


def brute(x, threshold):
    z = normalise(x)
    s = z @ z.T
    i, j = np.nonzero(np.triu(s >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=False)), s


def test_planted_duplicates_found_and_distinct_rows_not_flagged():
    x = planted()
    hits = scan(normalise(x), 0.95, block=64)     # many blocks: the blockwise path
    pairs = set(zip(hits.i.tolist(), hits.j.tolist(), strict=False))
    assert pairs == {(c, 400 + c) for c in range(12)}
    expected, s = brute(x, 0.95)
    assert pairs == expected
    # the k-NN cosines agree with brute force (each row's own cosine left out)
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_allclose(hits.knn, -np.sort(-s, axis=1)[:, :5], atol=1e-5)


def test_against_set_finds_the_shared_rows_only():
    x = planted()
    train, test = normalise(x[:400]), normalise(x[400:])
    hits = scan(test, 0.95, y=train, k=0, block=5)
    assert (sorted(zip(hits.i.tolist(), hits.j.tolist(), strict=False))
            == [(c, c) for c in range(12)])


def test_approximate_search_recall_measured_against_exact():
    pytest.importorskip("faiss")
    x = normalise(planted(n=3000, copies=60))
    hits = scan_approximate(x, 0.95)
    assert {(c, 3000 + c) for c in range(60)} <= set(zip(hits.i.tolist(), hits.j.tolist(),
                                                         strict=False))
    assert approximate_recall(x, hits, 0.95, sample=3060) == 1.0
    empty = hits.__class__(hits.i[:0], hits.j[:0], hits.cosine[:0], hits.knn)
    assert approximate_recall(x, empty, 0.95, sample=3060) == 0.0


def test_outlier_score_ranks_the_far_row_first():
    x = planted(copies=0)
    x[7] = -5 * x[7]          # far from every other row
    hits = scan(normalise(x), 0.99, block=50)
    assert int(np.argmax(outlier_scores(hits.knn))) == 7


def test_merge_groups_joins_chains_and_counts():
    groups = pd.Series(["L1", "L1", "L2", "L3", "L4"])
    ids = pd.Series(["a", "b", "c", "d", "e"])
    new, merged = merge_groups(groups, ids, [("b", "c"), ("c", "d"), ("a", "x-other-set")])
    assert list(new) == ["L1", "L1", "L1", "L1", "L4"] and merged == 2
    same, none = merge_groups(groups, ids, [("a", "b")])     # same group: nothing merges
    assert list(same) == list(groups) and none == 0


def test_group_merging_changes_the_folds_as_documented(tmp_path):
    """Two images of different lesions flagged as one picture land in different folds; after
    --merge-duplicate-groups they share one group, so one fold."""
    rng = np.random.default_rng(0)
    n = 60
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)],
                          "group_id": [f"L{i}" for i in range(n)],
                          "dx": rng.choice(["a", "b"], n)})
    folds = fold_ids(table, 5, "group", seed=1)
    a, b = next((i, j) for i in range(n) for j in range(i + 1, n)
                if folds[i] != folds[j] and table.dx[i] == table.dx[j])
    dup = tmp_path / "duplicates.csv"
    pd.DataFrame({"image_id_a": [f"img{a}"], "image_id_b": [f"img{b}"],
                  "kind": ["different_groups"]}).to_csv(dup, index=False)
    merged, count = merge_duplicate_groups(table, tmp_path)     # the audit folder works too
    assert count == 1 and merged.attrs["merged_groups"] == 1
    after = fold_ids(merged, 5, "group", seed=1)
    assert after[a] == after[b]
    assert merged["group_id"].nunique() == n - 1
    assert list(table["group_id"]) == [f"L{i}" for i in range(n)]   # the input is untouched


def test_label_issue_ranking_finds_flipped_labels():
    pytest.importorskip("cleanlab")
    from skinfeat.data.datasets import Dataset
    from skinfeat.data.spec import DatasetSpec
    from skinfeat.evaluate.audit_labels import label_issues
    from skinfeat.workflows.audit import quick_probe

    rng = np.random.default_rng(0)
    n, classes = 600, ("a", "b", "c")
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 16)) + 4 * np.eye(3, 16)[y]
    flipped = rng.choice(n, 30, replace=False)
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + rng.integers(1, 3, 30)) % 3
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)],
                          "group_id": [f"g{k}" for k in range(n)],
                          "dx": np.array(classes)[y_noisy], "label": y_noisy})
    data = Dataset(table, DatasetSpec(name="csv"), classes)
    found = label_issues(table, quick_probe(data, x), classes)
    hit = set(found["image_id"]) & {f"i{k}" for k in flipped}
    assert len(hit) >= 0.8 * len(flipped)
    assert len(found) <= 2 * len(flipped)
    top = found.head(10)
    assert (top["given_label"] != top["suggested_label"]).all()


# ---------------------------------------------------------------- end to end, tiny model
@pytest.fixture(scope="module")
def dup_set(synth_dir, tmp_path_factory):
    """The synthetic set plus byte-identical and re-encoded copies of three images under new
    lesion ids (one with another label), and a small "test" set sharing two train images."""
    root = tmp_path_factory.mktemp("audit") / "train"
    shutil.copytree(synth_dir, root)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    folder = root / "HAM10000_images_part_1"
    rows = []
    for k, r in enumerate(meta.iloc[:3].to_dict("records")):
        src = next(root.glob(f"*/{r['image_id']}.jpg"))
        shutil.copyfile(src, folder / f"COPY_{k}.jpg")
        dx = r["dx"] if k != 2 else "nv" if r["dx"] == "mel" else "mel"   # a conflict
        rows.append({**r, "image_id": f"COPY_{k}", "lesion_id": f"HAM_COPY{k}", "dx": dx})
    pd.concat([meta, pd.DataFrame(rows)]).to_csv(root / "HAM10000_metadata.csv", index=False)
    test = root.parent / "test"
    (test / "HAM10000_images_part_1").mkdir(parents=True)
    trows = []
    for k, r in enumerate(meta.iloc[10:12].to_dict("records")):
        shutil.copyfile(next(root.glob(f"*/{r['image_id']}.jpg")),
                        test / "HAM10000_images_part_1" / f"TEST_{k}.jpg")
        trows.append({**r, "image_id": f"TEST_{k}", "lesion_id": f"HAM_TEST{k}"})
    pd.DataFrame(trows).to_csv(test / "HAM10000_metadata.csv", index=False)
    for d in (root, test):
        run_cli("extract", "--data", d, "--cache", d.parent / f"{d.name}.h5", *EXTRACT_TINY)
    return {"train": root, "test": test, "train_cache": root.parent / "train.h5",
            "test_cache": root.parent / "test.h5", "meta": meta}


def one_c(folder) -> str:
    """A linear-probe recipe of one C: the cv runs below are about the groups, not the probe
    (its default grid of seven Cs costs tens of CPU seconds per fold on 160 rows)."""
    path = folder / "recipe.toml"
    path.write_text('model = "linear"\n[linear]\ncs = [0.1]\n')
    return str(path)


def test_audit_cli_flags_planted_copies_and_writes_its_files(dup_set, tmp_path, monkeypatch):
    # The cosine rule alone: with random weights every embedding is alike, and the synthetic
    # blobs of one class share their perceptual hash, so the hash rule would join them all.
    monkeypatch.setattr("skinfeat.workflows.audit.HASH_RULE_LIMIT", 0)
    out = tmp_path / "audit"
    r = run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["train_cache"],
                "--against", dup_set["test"], "--against-cache", dup_set["test_cache"],
                "--out", out, "--threshold", "0.99999", "--top", "8")
    assert "report:" in r.output
    for name in ("audit_report.md", "duplicates.csv", "label_issues.csv", "outliers.csv",
                 "groups.csv", "audit.json", "duplicates.png", "outliers.png"):
        assert (out / name).is_file(), name
    dup = pd.read_csv(out / "duplicates.csv")
    meta = dup_set["meta"]
    kinds = {(a, b): k for a, b, k in zip(dup.image_id_a, dup.image_id_b, dup.kind, strict=True)}
    key = {frozenset(p): k for p, k in kinds.items()}
    for k in range(3):
        assert frozenset((meta.image_id[k], f"COPY_{k}")) in key
    assert key[frozenset((meta.image_id[0], "COPY_0"))] == "different_groups"
    assert key[frozenset((meta.image_id[2], "COPY_2"))] == "conflicting_labels"
    for k in range(2):   # the test set's copies of train images: contamination
        assert key[frozenset((f"TEST_{k}", meta.image_id[10 + k]))] == "across_sets"
    assert (dup["phash_distance"] == 0).all()      # byte-identical files: the same hash
    groups = pd.read_csv(out / "groups.csv")
    merged = groups.set_index("image_id")["merged_group_id"]
    assert merged["COPY_0"] == merged[meta.image_id[0]]
    counts = json.loads((out / "audit.json").read_text())["counts"]
    assert counts["across_sets"] == 2 and counts["merged_groups"] >= 3
    report = (out / "audit_report.md").read_text()
    assert "across sets" in report and "| 2 |" in report
    with Image.open(out / "duplicates.png") as sheet:
        assert sheet.width > 300


@pytest.mark.slow   # a 160-image set through stage one and a 5-fold cv
def test_the_audit_page_python_example_runs(tmp_path, monkeypatch):
    """docs/audit.md's Python block, on a synthetic HAM10000 laid out where it looks."""
    from test_docs_examples import ROOT, blocks

    import skinfeat
    from skinfeat.data.synthetic import make_synthetic_ham

    [code] = [code for lang, code, test, _ in blocks(ROOT / "docs" / "audit.md")
              if lang == "python" and test == "tests/test_audit.py"]
    monkeypatch.chdir(tmp_path)
    root = make_synthetic_ham("data/ham10000", n_images=160, seed=1)
    skinfeat.extract(skinfeat.load_dataset(root), "cache/ham.h5", backbone="test_convnext",
                     weights="random", image_size=64, num_workers=0)
    # The default threshold is calibrated on real weights; random test_convnext embeddings are
    # all alike, so here only identical embeddings count as duplicates.
    # The hash rule is off for the same reason: the synthetic blobs of one class share a hash.
    import skinfeat.workflows.audit as audit_workflow
    monkeypatch.setattr(audit_workflow, "DEFAULT_THRESHOLD", 0.99999)
    monkeypatch.setattr(audit_workflow, "HASH_RULE_LIMIT", 0)
    scope: dict = {}
    exec(compile(code, "docs/audit.md", "exec"), scope)
    assert scope["res"].out.name == "audit" and (tmp_path / "runs" / "audit").is_dir()
    assert "merged_groups" in scope["merged"].table.attrs
    assert scope["cv"].report_path.is_file()


def test_audit_api_returns_a_frozen_typed_result(dup_set):
    import dataclasses

    import skinfeat

    res = skinfeat.audit(dup_set["train"], dup_set["train_cache"], threshold=0.99999,
                         labels=False)
    assert isinstance(res, skinfeat.AuditResult)
    assert res.label_issues is None and res.counts["label_issues"] == -1
    assert res.counts["different_groups"] + res.counts["conflicting_labels"] >= 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.threshold = 0.5
    assert (res.out / "duplicates.csv").is_file()


def test_cv_merge_duplicate_groups_says_how_many(dup_set, tmp_path, monkeypatch):
    # The cosine rule alone (random weights: see test_audit_cli_flags_planted_copies...)
    monkeypatch.setattr("skinfeat.workflows.audit.HASH_RULE_LIMIT", 0)
    audit = tmp_path / "audit"
    run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--out",
            audit, "--threshold", "0.99999", "--no-labels")
    n = json.loads((audit / "audit.json").read_text())["counts"]["merged_groups"]
    out = tmp_path / "cv"
    r = run_cli("cv", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--out",
                out, "--models", "linear", "--inputs", "image", "--folds", "3", "--jobs", "1",
                "--config", one_c(tmp_path), "--merge-duplicate-groups", audit / "duplicates.csv")
    assert f"merged {n} group" in r.output
    assert f"{n} group(s) merged" in (out / "cv_report.md").read_text()
    split = pd.read_csv(out / "cv_folds.csv")
    assert (split["merged_groups"] == n).all()
    g = split.set_index("image_id")["group_id"]
    assert g["COPY_0"] == g[dup_set["meta"].image_id[0]]


# ---------------------------------------------------------------- bad input: one line each
def one_line_error(r, *words):
    assert r.exit_code != 0
    msg = r.output.strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith("Error:"), r.output
    for w in words:
        assert w in msg[0], (w, msg[0])


def test_cache_not_covering_the_data_is_one_line(dup_set, tmp_path):
    r = run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["test_cache"], "--out",
                tmp_path / "a", ok=False)
    one_line_error(r, str(dup_set["test_cache"]), "not in this cache")


def test_against_cache_of_another_encoder_is_refused(dup_set, tmp_path):
    from skinfeat.embed.cache import read_cache

    c = read_cache(dup_set["test_cache"])
    other = tmp_path / "other.h5"
    ident = json.loads(json.dumps(c.identity))
    ident["backbone"] = "resnet18"
    write_cache(other, CacheContents(c.image_ids, c.embeddings, None, identity=ident))
    r = run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["train_cache"],
                "--against", dup_set["test"], "--against-cache", other, "--out", tmp_path / "a",
                ok=False)
    one_line_error(r, str(other), "not comparable")


def test_oof_of_another_data_set_is_refused(dup_set, tmp_path):
    oof = tmp_path / "oof_predictions.csv"
    pd.DataFrame({"image_id": ["X1", "X2"], "p_nv": [0.5, 0.5], "p_mel": [0.5, 0.5]}) \
        .to_csv(oof, index=False)
    r = run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["train_cache"],
                "--oof", oof, "--out", tmp_path / "a", ok=False)
    one_line_error(r, str(oof))


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_threshold_out_of_range_is_one_line(dup_set, tmp_path, value):
    r = run_cli("audit", "--data", dup_set["train"], "--cache", dup_set["train_cache"],
                "--threshold", value, "--out", tmp_path / "a", ok=False)
    one_line_error(r, "--threshold", value)


def test_merge_file_of_another_set_is_refused(tmp_path):
    from skinfeat.data.tables import DataError

    table = pd.DataFrame({"image_id": ["a", "b"], "group_id": ["1", "2"], "dx": ["x", "x"]})
    dup = tmp_path / "duplicates.csv"
    pd.DataFrame({"image_id_a": ["q"], "image_id_b": ["r"]}).to_csv(dup, index=False)
    with pytest.raises(DataError, match="duplicates.csv"):
        merge_duplicate_groups(table, dup)


def test_fit_head_merge_says_it_in_the_split_and_the_model_card(dup_set, tmp_path):
    dup = tmp_path / "duplicates.csv"
    meta = dup_set["meta"]
    pd.DataFrame({"image_id_a": [meta.image_id[0]], "image_id_b": ["COPY_0"],
                  "kind": ["different_groups"]}).to_csv(dup, index=False)
    out = tmp_path / "fit"
    run_cli("fit-head", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--out",
            out, "--max-epochs", "2", "--merge-duplicate-groups", dup)
    split = pd.read_csv(out / "splits.csv")
    assert (split["merged_groups"] == 1).all()
    assert "1 group(s) joined by near-duplicate pairs" in (out / "README.md").read_text()


def test_cv_drop_label_issues_reports_what_it_dropped(dup_set, tmp_path):
    issues = tmp_path / "label_issues.csv"
    gone = list(dup_set["meta"].image_id[20:23])
    pd.DataFrame({"rank": [1, 2, 3], "image_id": gone}).to_csv(issues, index=False)
    out = tmp_path / "cv"
    r = run_cli("cv", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--out",
                out, "--models", "linear", "--inputs", "image", "--folds", "3", "--jobs", "1",
                "--config", one_c(tmp_path), "--drop-label-issues", issues)
    assert "dropped 3 image(s)" in r.output and gone[0] in r.output
    report = (out / "cv_report.md").read_text()
    assert "3 image(s)" in report and all(g in report for g in gone)
    scored = set(pd.read_csv(out / "cv_folds.csv")["image_id"])
    assert not scored & set(gone)
    assert len(scored) == len(pd.read_csv(dup_set["train"] / "HAM10000_metadata.csv")) - 3


def one_pair_file(dup_set, tmp_path):
    """A duplicates.csv joining one train image's lesion with its copy's (1 group merged)."""
    dup = tmp_path / "duplicates.csv"
    pd.DataFrame({"image_id_a": [dup_set["meta"].image_id[0]], "image_id_b": ["COPY_0"],
                  "kind": ["different_groups"]}).to_csv(dup, index=False)
    return dup


@pytest.mark.slow   # one Optuna trial on 2 folds, then the chosen head once
def test_tune_records_the_merge_count(dup_set, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    run_cli("tune", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--out", out,
            "--trials", "1", "--folds", "2", "--max-epochs", "1", "--jobs", "1",
            "--merge-duplicate-groups", one_pair_file(dup_set, tmp_path))
    assert json.loads((out / "tune_metrics.json").read_text())["merged_groups"] == 1
    assert "1 group(s) merged into others" in (out / "tune_report.md").read_text()


@pytest.mark.slow   # two caches x the head on 2 folds
def test_compare_records_the_merge_count(dup_set, tmp_path):
    other = tmp_path / "again.h5"
    shutil.copyfile(dup_set["train_cache"], other)      # a second entry to compare with
    out = tmp_path / "cmp"
    run_cli("compare", "--data", dup_set["train"], "--cache", dup_set["train_cache"], "--cache",
            other, "--models", "head", "--max-epochs", "1", "--folds", "2", "--n-boot", "20",
            "--jobs", "1", "--out", out, "--merge-duplicate-groups",
            one_pair_file(dup_set, tmp_path))
    assert json.loads((out / "compare.json").read_text())["merged_groups"] == 1
    assert "1 group(s) merged into others" in (out / "compare_report.md").read_text()
    folds = pd.read_csv(out / "cv" / "again" / "cv_folds.csv")
    assert (folds["merged_groups"] == 1).all()


def test_hash_rule_finds_a_resized_copy_below_the_cosine_threshold(synth_dir, tmp_path):
    """A copy resized and re-encoded at JPEG quality 30 whose embedding moved to cosine 0.8
    (below the 0.92 threshold) is flagged by its perceptual hash; a distinct image at the same
    cosine is not; both are found by neither rule on the cosine alone."""
    pytest.importorskip("imagehash")
    import skinfeat
    from skinfeat.evaluate.audit_hash import phash
    from skinfeat.workflows.audit import DEFAULT_THRESHOLD, HASH_BITS, HASH_COSINE

    root = tmp_path / "set"
    shutil.copytree(synth_dir, root)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    ids = list(meta.image_id)
    path = {i: next(root.glob(f"*/{i}.jpg")) for i in ids}
    with Image.open(path[ids[0]]) as img:
        w, h = img.size
        img.convert("RGB").resize((w // 2, h // 2)).resize((w, h)).save(
            root / "HAM10000_images_part_1" / "COPY.jpg", quality=30)
    pd.concat([meta, meta.iloc[:1].assign(image_id="COPY", lesion_id="HAM_COPY")]) \
        .to_csv(root / "HAM10000_metadata.csv", index=False)
    far = next(i for i in ids[1:] if phash(str(path[i])) - phash(str(path[ids[0]])) > 20)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(ids) + 1, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = (HASH_COSINE + DEFAULT_THRESHOLD) / 2            # between the two rules' cosines
    for row in (len(ids), ids.index(far)):                  # the copy, and a distinct image
        other = emb[row] - (emb[row] @ emb[0]) * emb[0]
        emb[row] = cos * emb[0] + np.sqrt(1 - cos ** 2) * other / np.linalg.norm(other)
    cache = tmp_path / "c.h5"
    write_cache(cache, CacheContents(np.array(ids + ["COPY"], dtype=object),
                                     emb.astype(np.float32), None))
    res = skinfeat.audit(root, cache, out=tmp_path / "audit", labels=False, outliers=False)
    pairs = {frozenset(p): (r, d) for p, r, d in zip(
        zip(res.duplicates.image_id_a, res.duplicates.image_id_b, strict=True),
        res.duplicates.rule, res.duplicates.phash_distance, strict=True)}
    rule, bits = pairs[frozenset((ids[0], "COPY"))]
    assert rule == "cosine+phash" and bits <= HASH_BITS
    assert frozenset((ids[0], far)) not in pairs
    assert res.counts["different_groups"] == 1 and res.counts["merged_groups"] == 1
    report = (tmp_path / "audit" / "audit_report.md").read_text()
    assert "cosine+phash: 1 pairs" in report


def test_close_hash_pairs_match_brute_force():
    from skinfeat.evaluate.audit_hash import bit_distance, close_pairs

    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, 300, dtype=np.uint64)
    for k in range(40):                     # near copies: 0 to 6 bits flipped
        flips = rng.choice(64, k % 7, replace=False)
        words[260 + k] = words[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    d = bit_distance(words[:, None], words[None, :])
    for bits in (0, 3, 4):
        i, j, dist = close_pairs(words, bits)
        bi, bj = np.nonzero(np.triu(d <= bits, 1))
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == \
            set(zip(bi.tolist(), bj.tolist(), strict=True))
        assert (dist <= bits).all() and len(i) > 0
    i, j, _ = close_pairs(words[260:], 4, words[:260])      # across two sets
    assert {(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)} == \
        {(k, k) for k in range(40) if k % 7 <= 4}
