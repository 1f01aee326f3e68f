"""Turn search hits into findings: classified duplicate pairs (with a perceptual-hash check
where the image files exist) and ranked outliers, as the tables the audit writes."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data.images import open_image
from .audit_search import ScanResult, outlier_scores, robust_z

if TYPE_CHECKING:
    from imagehash import ImageHash

log = logging.getLogger(__name__)

# The class of a flagged pair, most serious first (a pair gets the first that applies).
KINDS = ("across_sets", "conflicting_labels", "different_groups", "same_group")
KIND_TEXT = {"across_sets": "across sets (contamination: the same image in both sets)",
             "conflicting_labels": "conflicting labels (one image, two labels)",
             "different_groups": "different groups in one set (a grouped split may put them "
                                 "on both sides)",
             "same_group": "same group (expected: images of one lesion)"}
OUTLIER_Z = 6.0          # robust z-score of the k-NN distance past which a row is flagged
PHASH_LIMIT = 20_000     # images hashed at most (the pairs' images, closest pairs first)


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


def phash(locator: str) -> ImageHash:
    import imagehash

    with open_image(locator) as img:
        return imagehash.phash(img.convert("RGB"))


def add_phash(frame: pd.DataFrame, paths: dict[str, str]) -> pd.DataFrame:
    """Hamming distance (0-64 bits) of the perceptual hashes of each pair's images, where both
    files exist (else NaN): a second opinion that does not depend on the encoder."""
    if frame.empty or not paths:
        return frame
    try:
        import imagehash  # noqa: F401
    except ImportError:
        log.warning("imagehash not installed (pip install 'skinfeat[audit]'): no perceptual-hash "
                    "check of the pairs")
        return frame
    hashes: dict[str, ImageHash] = {}
    distance = []
    for a, b in zip(frame["image_id_a"], frame["image_id_b"], strict=True):
        pa, pb = paths.get(a), paths.get(b)
        if not pa or not pb or len(hashes) >= PHASH_LIMIT:
            distance.append(np.nan)
            continue
        try:
            for key, p in ((a, pa), (b, pb)):
                if key not in hashes:
                    hashes[key] = phash(p)
            distance.append(float(hashes[a] - hashes[b]))
        except (OSError, ValueError, KeyError):
            distance.append(np.nan)
    return frame.assign(phash_distance=distance)


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
