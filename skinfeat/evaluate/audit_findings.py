"""Turn search hits into findings: classified duplicate pairs (with a perceptual-hash check
where the image files exist) and ranked outliers, as the tables the audit writes."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import InputError
from .audit_hash import bit_distance, close_pairs, hash_words, thumbnail_correlation
from .audit_search import ScanResult, outlier_scores, robust_z

log = logging.getLogger(__name__)

# The class of a flagged pair, most serious first (a pair gets the first that applies).
KINDS = ("across_sets", "conflicting_labels", "different_groups", "same_group")
KIND_TEXT = {"across_sets": "across sets (contamination: the same image in both sets)",
             "conflicting_labels": "conflicting labels (one image, two labels)",
             "different_groups": "different groups in one set (a grouped split may put them "
                                 "on both sides)",
             "same_group": "same group (expected: images of one lesion)"}
OUTLIER_Z = 6.0          # robust z-score of the k-NN distance past which a row is flagged
PHASH_LIMIT = 20_000     # images hashed at most for the pairs (closest pairs first)


def pair_frame(a: pd.DataFrame, b: pd.DataFrame | None, hits: ScanResult,
               names: tuple[str, str] = ("data", "against")) -> pd.DataFrame:
    """One row per flagged pair: both ids, sets, groups, labels, the cosine and its class
    (``KINDS``), closest first. ``b=None``: pairs within ``a``."""
    b_ = a if b is None else b
    ia, jb = hits.i, hits.j
    frame = pd.DataFrame({
        "image_id_a": a["image_id"].to_numpy()[ia], "image_id_b": b_["image_id"].to_numpy()[jb],
        "set_a": names[0], "set_b": names[0] if b is None else names[1],
        "group_a": a["group_id"].astype(str).to_numpy()[ia],
        "group_b": b_["group_id"].astype(str).to_numpy()[jb],
        "label_a": a["dx"].astype(str).to_numpy()[ia],
        "label_b": b_["dx"].astype(str).to_numpy()[jb],
        "cosine": np.round(hits.cosine.astype(np.float64), 5),
        "phash_distance": np.nan})
    kind = np.where(frame["label_a"] != frame["label_b"], "conflicting_labels",
                    np.where(frame["group_a"] != frame["group_b"], "different_groups",
                             "same_group"))
    if b is not None:
        kind[:] = "across_sets"
    frame["kind"] = kind
    return frame.sort_values("cosine", ascending=False, kind="stable").reset_index(drop=True)


def add_phash(frame: pd.DataFrame, paths: dict[str, str],
              words: dict[str, np.uint64] | None = None) -> pd.DataFrame:
    """Hamming distance (0-64 bits) of the perceptual hashes of each pair's images, where both
    files exist (else NaN): a second opinion that does not depend on the encoder. ``words``:
    hashes already computed (image id -> 64-bit word); the others are computed here."""
    if frame.empty or not paths:
        return frame
    if not can_hash():
        log.warning("imagehash not installed (pip install 'skinfeat[audit]'): no perceptual-hash "
                    "check of the pairs")
        return frame
    known: dict[str, np.uint64 | None] = dict(words or {})
    distance = []
    for a, b in zip(frame["image_id_a"], frame["image_id_b"], strict=True):
        for key in (a, b):
            if key not in known and paths.get(key) and len(known) < PHASH_LIMIT:
                word, ok = hash_words([paths[key]])
                known[key] = word[0] if ok[0] else None
        wa, wb = known.get(a), known.get(b)
        distance.append(np.nan if wa is None or wb is None else
                        float(bit_distance(np.array([wa]), np.array([wb]))[0]))
    return frame.assign(phash_distance=distance)


def hash_hits(words: np.ndarray, ok: np.ndarray, x: np.ndarray, locators: list, *, bits: int,
              min_cosine: float, min_correlation: float, threshold: float,
              words_b: np.ndarray | None = None, ok_b: np.ndarray | None = None,
              y: np.ndarray | None = None, locators_b: list | None = None) -> ScanResult:
    """The pairs that only the hash rule flags: perceptual hashes at most ``bits`` apart,
    cosine in [``min_cosine``, ``threshold``), grey thumbnails correlated at
    ``min_correlation`` or more (within one set, or against ``words_b`` / ``y``)."""
    ia = np.flatnonzero(ok)
    if words_b is None:
        ib, ref, other = ia, x, locators
        i, j, _ = close_pairs(words[ia], bits)
    else:
        if ok_b is None or y is None or locators_b is None:
            raise InputError("hash_hits: words_b needs ok_b, y and locators_b as well")
        ib, ref, other = np.flatnonzero(ok_b), y, locators_b
        i, j, _ = close_pairs(words[ia], bits, words_b[ib])
    i, j = ia[i], ib[j]
    cos = np.einsum("ij,ij->i", x[i], ref[j]).astype(np.float32)
    keep = (cos >= min_cosine) & (cos < threshold)
    i, j, cos = i[keep], j[keep], cos[keep]
    corr = thumbnail_correlation([(locators[a], other[b]) for a, b in zip(i, j, strict=True)])
    keep = corr >= min_correlation
    return ScanResult(i[keep], j[keep], cos[keep], np.zeros((0, 0), np.float32),
                      method="phash")


def can_hash() -> bool:
    """Whether the perceptual hashes can be computed (imagehash, the audit extra)."""
    try:
        import imagehash  # noqa: F401
    except ImportError:
        return False
    return True


def outlier_frame(table: pd.DataFrame, knn: np.ndarray, top: int) -> pd.DataFrame:
    """The ``top`` rows farthest from their nearest neighbours (mean cosine distance to the k
    nearest), with the robust z-score of that distance and whether it passes ``OUTLIER_Z``."""
    score = outlier_scores(knn)
    z = robust_z(score)
    order = np.argsort(-score, kind="stable")[:top]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1),
                         "image_id": table["image_id"].to_numpy()[order],
                         "group_id": table["group_id"].astype(str).to_numpy()[order],
                         "label": table["dx"].astype(str).to_numpy()[order],
                         "knn_distance": score[order].round(5), "robust_z": z[order].round(2),
                         "flagged": z[order] >= OUTLIER_Z})


def counts(duplicates: pd.DataFrame, label_issues: pd.DataFrame | None,
           outliers: pd.DataFrame, merged_groups: int) -> dict[str, int]:
    """The number of findings of each class."""
    found = {k: int((duplicates["kind"] == k).sum()) for k in KINDS}
    found["label_issues"] = -1 if label_issues is None else int(len(label_issues))
    found["outliers"] = int(outliers["flagged"].sum())
    found["merged_groups"] = int(merged_groups)
    return found


def image_paths(table: pd.DataFrame) -> dict[str, str]:
    """image_id -> image file (or HDF5 locator), for the rows that have one (a data set read
    with ``images=False`` has none)."""
    if "path" not in table.columns:
        return {}
    return {i: p
            for i, p in zip(table["image_id"].astype(str), table["path"].astype(str), strict=True)
            if p and p != "nan"}
