"""The data audit: near-duplicates (within a set and across two), label issues and outliers,
from the cached embeddings; writes the audit folder and returns an ``AuditResult``.

Files in ``out``: ``audit_report.md`` (counts per class of finding), ``duplicates.csv``,
``label_issues.csv``, ``outliers.csv``, ``groups.csv`` (each image's group before and after
joining the groups that flagged pairs connect), ``audit.json`` (settings and counts) and the
contact sheets ``duplicates.png``, ``label_issues.png``, ``outliers.png`` where image files exist.
Nothing in the data set is changed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

from ..atomic import write_artifact, write_text
from ..data.datasets import Dataset
from ..data.duplicate_groups import groups_frame, merge_groups
from ..data.splits import fold_ids
from ..embed.cache import CacheError, comparable, examples, identity_diff, read_cache
from ..embed.embedding_cache import PathLike
from ..errors import InputError
from ..evaluate import audit_findings as findings
from ..evaluate.audit_labels import label_issues as rank_label_issues
from ..evaluate.audit_labels import read_oof
from ..evaluate.audit_search import (
    DEFAULT_K,
    ScanResult,
    approximate_recall,
    check_threshold,
    normalise,
    search,
)
from ..evaluate.audit_sheets import pair_sheet, single_sheet
from .results import run_folder

log = logging.getLogger(__name__)

# Cosine of L2-normalised embeddings at or above which two images are flagged: the lowest with
# no false pair among 179,700 pairs of distinct HAM10000 lesions, real MobileNetV2 embeddings
# (benchmarks/audit_planted.py; docs/audit.md). Plain cosine: centring the embeddings first
# separated altered copies from distinct lesions less well there.
DEFAULT_THRESHOLD = 0.92
# The second rule, where the image files exist: a pair below the threshold but at or above
# HASH_COSINE is flagged when its images' 64-bit perceptual hashes differ by at most HASH_BITS
# bits and their 64 x 64 grey thumbnails correlate at HASH_CORRELATION or more. Resizing and
# strong JPEG re-encoding move MobileNetV2's embedding of these small images more than their
# hash. On the planted set every resized and JPEG-q35 copy was within 4 bits of its original
# (thumbnail correlation >= 0.986), none of the 114,635 distinct-lesion pairs at cosine >= 0.60
# within 5 bits; on the real HAM10000, 201 pairs across lesion ids were within 4 bits, nearly
# all of them distinct lesions (centred brown discs), whose thumbnails correlated at 0.969 at
# most; the one copy among them at 0.998 (docs/audit.md).
HASH_COSINE = 0.60
HASH_BITS = 4
HASH_CORRELATION = 0.98
HASH_RULE_LIMIT = 150_000   # images hashed at most for the rule (about 1 ms each, small images)
PROBE_DIM = 128          # the quick linear probe's PCA width


class _HashRule(TypedDict):
    """The hash rule's keyword arguments to ``hash_hits``."""
    bits: int
    min_cosine: float
    min_correlation: float
    threshold: float


@dataclass(frozen=True)
class AuditResult:
    """What an audit found. ``counts``: findings per class (``KINDS`` of pairs, label_issues
    (-1: not run), flagged outliers, merged_groups); the tables are those of the CSV files."""
    out: Path
    threshold: float
    method: str
    counts: dict
    duplicates: pd.DataFrame = field(repr=False)
    label_issues: pd.DataFrame | None = field(repr=False)
    outliers: pd.DataFrame = field(repr=False)
    groups: pd.DataFrame = field(repr=False)
    recall: float | None = None       # approximate search: recall against exact on a sample
    sheets: tuple[Path, ...] = ()
    _owner: object = field(default=None, repr=False, compare=False)


def aligned_embeddings(data: Dataset, cache: Path,
                       flag: str = "--cache") -> tuple[np.ndarray, dict]:
    """The cache's embeddings in the data set's row order and its identity; a cache that
    misses some of the data's images is a one-line error naming it."""
    contents = read_cache(cache)
    pos = {str(i): k for k, i in enumerate(contents.image_ids)}
    ids = data.table["image_id"].astype(str)
    missing = [i for i in ids if i not in pos]
    if missing:
        raise CacheError(f"{cache}: {len(missing)} of the {len(ids)} images of {data.source} "
                         f"are not in this cache ({flag}), e.g. {examples(missing, 3)}; run "
                         "skinfeat extract on this data set first")
    return contents.embeddings[[pos[i] for i in ids]], contents.identity or {}


def same_encoder(cache: Path, identity: dict, other: Path, other_identity: dict) -> None:
    """Refuse to compare embeddings of two different encoders (or preprocessings)."""
    a, b = comparable(identity), comparable(other_identity)
    if a != b:
        diff = "; ".join(identity_diff(b, a)) or "identities differ"
        raise CacheError(f"{other}: made by another encoder or preprocessing than {cache} "
                         f"({diff}); embeddings of different encoders are not comparable "
                         "(--against-cache)")


def quick_probe(data: Dataset, x: np.ndarray, folds: int = 5, seed: int = 42) -> np.ndarray:
    """Out-of-fold class probabilities of a linear probe (PCA to ``PROBE_DIM``, then
    multinomial logistic regression) on lesion-grouped folds: the label-issue ranking's
    input when no cv ``oof_predictions.csv`` is given."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    table = data.table
    n_classes = len(data.classes)
    z = PCA(min(PROBE_DIM, x.shape[1], len(x)), random_state=seed).fit_transform(x)
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-6)
    fold = fold_ids(table, folds, "group", seed, strict=False)
    y = table["label"].to_numpy()
    proba = np.zeros((len(table), n_classes))
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        # Unweighted: with class_weight="balanced" the 5 %-flipped HAM10000 recall fell from
        # 0.87 to 0.81 and the flagged list grew from 2,062 to 3,868 (benchmarks/audit_planted.py)
        model = LogisticRegression(max_iter=300, C=0.1).fit(z[~test], y[~test])
        proba[np.ix_(test, model.classes_)] = model.predict_proba(z[test])
    return proba


def dataset_with_images(data: Dataset | str | Path) -> Dataset:
    """The data set with its image files when they are there (the audit's perceptual hashes
    and contact sheets use them), else its tables alone."""
    from ..data.datasets import DataError, load_dataset

    if isinstance(data, Dataset):
        return data
    try:
        return load_dataset(data)
    except DataError:
        return load_dataset(data, images=False)


def run_audit(data: Dataset, cache: Path, out: Path, *, against: Dataset | None = None,
              against_cache: Path | None = None, threshold: float = DEFAULT_THRESHOLD,
              oof: Path | None = None, labels: bool = True, duplicates: bool = True,
              outliers: bool = True, top: int = 50, k: int = DEFAULT_K,
              method: str = "auto") -> AuditResult:
    threshold = check_threshold(threshold)
    if (against is None) != (against_cache is None):
        raise InputError("--against and --against-cache go together")
    out.mkdir(parents=True, exist_ok=True)
    raw, identity = aligned_embeddings(data, cache)
    raw_b = None
    if against is not None and against_cache is not None:   # both or neither (checked above)
        raw_b, identity_b = aligned_embeddings(against, against_cache, "--against-cache")
        same_encoder(cache, identity, against_cache, identity_b)
    x, y = normalise(raw), None if raw_b is None else normalise(raw_b)
    table = data.table
    paths = findings.image_paths(table)
    if against is not None:
        paths = {**findings.image_paths(against.table), **paths}
    hits = search(x, threshold if duplicates else 1.0, k=k if outliers else 0, method=method) \
        if duplicates or outliers else ScanResult(*(np.zeros(0, np.int64),) * 3,
                                                  knn=np.zeros((len(x), 0), np.float32))
    recall = None
    if hits.method != "exact":
        recall = approximate_recall(x, hits, threshold)
    pairs = findings.pair_frame(table, None, hits) if duplicates else \
        findings.pair_frame(table, None, hits).iloc[0:0]
    if against is not None and duplicates:
        across = search(x, threshold, y=y, k=0, method=method)
        pairs = pd.concat([pairs, findings.pair_frame(table, against.table, across)],
                          ignore_index=True)
    pairs = pairs.assign(rule="cosine")
    hashing = duplicates and bool(paths) and findings.can_hash() and \
        len(paths) <= HASH_RULE_LIMIT
    words: dict = {}
    if hashing:
        pairs, words = _hash_rule(pairs, table, x, paths, threshold, against, y)
    pairs = findings.add_phash(pairs.sort_values("cosine", ascending=False, kind="stable",
                                                 ignore_index=True), paths, words)
    joined = pairs[pairs["kind"].isin(["different_groups", "conflicting_labels"])]
    merged, n_merged = merge_groups(table["group_id"], table["image_id"],
                                    list(zip(joined["image_id_a"], joined["image_id_b"],
                                             strict=True)))
    groups = groups_frame(table, merged)
    issues = None
    if labels:
        proba = read_oof(oof, table, data.classes) if oof else quick_probe(data, raw)
        issues = rank_label_issues(table, proba, data.classes)
    outlier_table = findings.outlier_frame(table, hits.knn, top if outliers else 0)
    counts = findings.counts(pairs, issues, outlier_table, n_merged)
    sheets = _write(out, pairs, issues, outlier_table, groups, paths, top)
    summary = {"data": str(data.source), "cache": str(cache), "rows": len(table),
               "against": None if against is None else str(against.source),
               "against_cache": None if against_cache is None else str(against_cache),
               "threshold": threshold, "method": hits.method, "approximate_recall": recall,
               "hash_rule": {"cosine": HASH_COSINE, "phash_bits": HASH_BITS,
                             "thumbnail_correlation": HASH_CORRELATION} if hashing else None,
               "k": k, "label_source": None if not labels else str(oof) if oof else
               "quick linear probe (PCA 128 + logistic regression, 5 grouped folds)",
               "counts": counts}
    write_text(out / "audit.json", json.dumps(summary, indent=1))
    write_text(out / "audit_report.md", report_text(summary, pairs, issues, outlier_table,
                                                    sheets, top))
    return AuditResult(out, threshold, hits.method, counts, pairs, issues, outlier_table, groups,
                       recall, tuple(sheets))


def _hash_rule(pairs: pd.DataFrame, table: pd.DataFrame, x: np.ndarray, paths: dict,
               threshold: float, against: Dataset | None, y: np.ndarray | None
               ) -> tuple[pd.DataFrame, dict]:
    """``pairs`` with the pairs only the hash rule flags added (rule ``cosine+phash``), and
    every image's hash (image id -> 64-bit word)."""
    ids = table["image_id"].astype(str).tolist()
    locators = [paths.get(i) for i in ids]
    words, ok = findings.hash_words(locators)
    known = {i: w for i, w, o in zip(ids, words, ok, strict=True) if o}
    rule = _HashRule(bits=HASH_BITS, min_cosine=HASH_COSINE, threshold=threshold,
                    min_correlation=HASH_CORRELATION)
    found = [findings.pair_frame(table, None, findings.hash_hits(words, ok, x, locators,
                                                                 **rule))]
    if against is not None and y is not None:
        ids_b = against.table["image_id"].astype(str).tolist()
        locators_b = [paths.get(i) for i in ids_b]
        words_b, ok_b = findings.hash_words(locators_b)
        known.update({i: w for i, w, o in zip(ids_b, words_b, ok_b, strict=True) if o})
        found.append(findings.pair_frame(table, against.table, findings.hash_hits(
            words, ok, x, locators, words_b=words_b, ok_b=ok_b, y=y, locators_b=locators_b,
            **rule)))
    log.info("hash rule: %d images hashed, %d pairs below the cosine threshold flagged",
             len(known), sum(len(f) for f in found))
    return pd.concat([pairs, *(f.assign(rule="cosine+phash") for f in found)],
                     ignore_index=True), known


def _write(out: Path, pairs, issues, outlier_table, groups, paths, top) -> list[Path]:
    for name, frame in (("duplicates", pairs), ("outliers", outlier_table), ("groups", groups),
                        ("label_issues", issues)):
        if frame is not None:
            write_artifact(out / f"{name}.csv", partial(frame.to_csv, index=False))
    made = [pair_sheet(pairs, paths, out / "duplicates.png", top=min(top, 24))]
    if issues is not None:
        made.append(single_sheet(issues, paths, out / "label_issues.png",
                                 lambda r: f"given {r.given_label} -> {r.suggested_label} "
                                 f"p={r.p_given:.2f}", top=min(top, 30)))
    made.append(single_sheet(outlier_table, paths, out / "outliers.png",
                             lambda r: f"{r.label} dist {r.knn_distance:.3f} z {r.robust_z:.1f}",
                             top=min(top, 30)))
    return [p for p in made if p is not None]


def report_text(summary: dict, pairs: pd.DataFrame, issues, outlier_table, sheets, top) -> str:
    c = summary["counts"]
    lines = ["# Data audit", "",
             f"Data: `{summary['data']}` ({summary['rows']} images), cache `{summary['cache']}`"
             + (f"; against `{summary['against']}` (cache `{summary['against_cache']}`)"
                if summary["against"] else "") + ".",
             f"Near-duplicates: cosine of L2-normalised embeddings >= "
             f"{summary['threshold']} "
             f"({summary['method']} search"
             + (f", recall against exact on a sample {summary['approximate_recall']:.3f}"
                if summary["approximate_recall"] is not None else "") + ")"
             + (f"; below that, pairs at cosine >= {summary['hash_rule']['cosine']} whose "
                f"images' perceptual hashes differ by at most "
                f"{summary['hash_rule']['phash_bits']} bits and whose grey thumbnails "
                f"correlate at >= {summary['hash_rule']['thumbnail_correlation']} "
                f"(rule cosine+phash: "
                f"{int((pairs['rule'] == 'cosine+phash').sum())} pairs)"
                if summary["hash_rule"] else "") + ".", "",
             "| finding | count |", "|---|---|"]
    lines += [f"| pairs: {findings.KIND_TEXT[kind]} | {c[kind]} |" for kind in findings.KINDS]
    lines += [f"| groups merged by joining flagged pairs (groups.csv) | {c['merged_groups']} |",
              f"| label issues ({summary['label_source']}) | "
              f"{'not run' if c['label_issues'] < 0 else c['label_issues']} |",
              f"| outliers (k-NN distance, robust z >= {findings.OUTLIER_Z:g}) | {c['outliers']} |",
              ""]
    shown = pairs[pairs["kind"] != "same_group"].head(10)
    if len(shown):
        lines += ["## Closest pairs across groups or sets", "",
                  "| a | b | kind | cosine | phash bits | rule |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.image_id_a} ({r.group_a}, {r.label_a}) | {r.image_id_b} ({r.group_b}, "
                  f"{r.label_b}) | {r.kind} | {r.cosine:.4f} | "
                  f"{'-' if pd.isna(r.phash_distance) else int(r.phash_distance)} | {r.rule} |"
                  for r in shown.itertuples()]
        lines.append("")
    if issues is not None and len(issues):
        lines += ["## Top label issues (never changed here: look at them)", "",
                  "| rank | image | given | suggested | p(given) |", "|---|---|---|---|---|"]
        lines += [f"| {r.rank} | {r.image_id} | {r.given_label} | {r.suggested_label} | "
                  f"{r.p_given:.3f} |" for r in issues.head(10).itertuples()]
        lines.append("")
    lines += ["Phash bits: Hamming distance of the 64-bit perceptual hashes (0: same picture; "
              "up to about 10: the same picture resized, re-encoded or lightly edited).",
              "Use the merged groups: `--merge-duplicate-groups "
              "DUPLICATES_CSV` on cv, fit-head, tune and compare, or groups.csv's "
              "merged_group_id as the group column.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in sheets]
    return "\n".join(lines) + "\n"


def audit(data: Dataset | PathLike, cache: PathLike, *, against: Dataset | PathLike | None = None,
          against_cache: PathLike | None = None, out: PathLike | None = None,
          threshold: float | None = None, oof: PathLike | None = None, labels: bool = True,
          duplicates: bool = True, outliers: bool = True, top: int = 50,
          method: str = "auto") -> AuditResult:
    """Audit a data set from its cached embeddings (``skinfeat audit``): near-duplicate pairs
    (cosine >= ``threshold``, default calibrated: docs/audit.md) classified as same group,
    different groups, conflicting labels or (with ``against`` + ``against_cache``, another set)
    across sets; label issues from ``oof`` (cv's oof_predictions.csv) or a quick linear-probe
    cv; k-NN outliers. Writes the audit folder (``out``; None: temporary) and returns an
    ``AuditResult``; nothing in the data set is changed. ``method``: auto (exact up to the
    cost of a 100k-row set, then approximate on faiss k-means lists), exact or approximate."""
    where, owner = run_folder(out, "audit")
    res = run_audit(dataset_with_images(data), Path(cache), where,
                    against=None if against is None else dataset_with_images(against),
                    against_cache=None if against_cache is None else Path(against_cache),
                    threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                    oof=None if oof is None else Path(oof), labels=labels,
                    duplicates=duplicates, outliers=outliers, top=top, method=method)
    return replace(res, _owner=owner)
