"""The duplicate finder and the label-issue ranking measured on real HAM10000 images.

    .venv/bin/python benchmarks/audit_planted.py build --out /tmp/planted [--originals 600]
    .venv/bin/python -m skinfeat.cli extract --data /tmp/planted/train \
        --cache /tmp/planted/train.h5 --precision fp32 \
        --backbone local-dir:../shared/data/mobilenetv2_100.coral_in1k
    (the same for /tmp/planted/test)
    .venv/bin/python benchmarks/audit_planted.py measure --out /tmp/planted
    .venv/bin/python benchmarks/audit_planted.py flipped [--cache CACHE]   (default: the shared
        ham10000-mobilenetv2-embeddings.h5)

``build``: ``--originals`` real images of distinct lesions from ``ham10000-full`` (seed 0), and
for each alteration (``resize``: 0.5x then back up to a 300 px side; ``jpeg``: re-encoded at
quality 35; ``crop``: 4 % cut from each side; ``jitter``: brightness x1.15, contrast x0.9,
saturation x1.2, hue-free) a copy of ``--per-alteration`` of them under a new lesion id
(``PLANT_*``, the original's label). A second folder ``test/`` holds ``--test-distinct`` other
real lesions, ``--test-shared`` byte-identical copies of train originals and as many
JPEG-re-encoded ones (test-set contamination).

``measure``: per alteration, recall (copy paired with its original) and precision (of the
pairs flagged among the originals and that alteration's copies, the share that are planted
copies): "before", the cosine rule alone at a sweep of thresholds; "after", at the default
threshold with the perceptual-hash rule added (``HASH_COSINE``, ``HASH_BITS``,
``HASH_CORRELATION``); the cosine of
each copy to its original against the highest cosine of each original to any other distinct
lesion (the calibration); and the across-set audit (test vs train), before and after.

``flipped``: 5 % of the labels of the cached HAM10000 embeddings flipped at random to another
class; the recall (and precision) of the label-issue ranking of a quick linear-probe cv.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

FULL = Path(__file__).resolve().parents[2] / "shared/data/ham10000-full"
ALTERATIONS = ("resize", "jpeg", "crop", "jitter")


def alter(img, how: str):
    from PIL import ImageEnhance

    w, h = img.size
    if how == "resize":
        small = img.resize((w // 2, h // 2))
        return small.resize((300, round(300 * h / w)))
    if how == "crop":
        dx, dy = round(0.04 * w), round(0.04 * h)
        return img.crop((dx, dy, w - dx, h - dy))
    if how == "jitter":
        img = ImageEnhance.Brightness(img).enhance(1.15)
        img = ImageEnhance.Contrast(img).enhance(0.9)
        return ImageEnhance.Color(img).enhance(1.2)
    return img   # jpeg: the re-encoding at another quality is the alteration


def image_path(image_id: str) -> Path:
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        p = FULL / part / f"{image_id}.jpg"
        if p.is_file():
            return p
    raise FileNotFoundError(image_id)


def write_set(root: Path, rows: list[dict]) -> None:
    (root / "HAM10000_images_part_1").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).drop(columns=["_img", "_quality", "_copy_of", "_alteration"]) \
        .to_csv(root / "HAM10000_metadata.csv", index=False)
    for r in rows:
        dst = root / "HAM10000_images_part_1" / f"{r['image_id']}.jpg"
        if r["_img"] is None:
            shutil.copyfile(image_path(r["_copy_of"]), dst)
        else:
            r["_img"].save(dst, quality=r["_quality"])


def build(out: Path, originals: int, per_alteration: int, test_distinct: int,
          test_shared: int) -> None:
    from PIL import Image

    meta = pd.read_csv(FULL / "HAM10000_metadata.csv")
    one = meta.drop_duplicates("lesion_id").sample(frac=1.0, random_state=0)
    train, test_rows = one.iloc[:originals], one.iloc[originals:originals + test_distinct]
    rows, truth = [], []

    def row(r, image_id, lesion, img=None, quality=95, copy_of=None, alteration=None):
        d = r.to_dict() | {"image_id": image_id, "lesion_id": lesion}
        return d | {"_img": img, "_quality": quality, "_copy_of": copy_of or r["image_id"],
                    "_alteration": alteration}

    for _, r in train.iterrows():
        rows.append(row(r, r["image_id"], r["lesion_id"]))
    k = 0
    for how in ALTERATIONS:
        for _, r in train.iloc[k:k + per_alteration].iterrows():
            img = alter(Image.open(image_path(r["image_id"])).convert("RGB"), how)
            new = f"PLANT_{how}_{r['image_id']}"
            rows.append(row(r, new, f"HAM_P{how}{r['lesion_id'][4:]}", img,
                            quality=35 if how == "jpeg" else 95, alteration=how))
            truth.append({"original": r["image_id"], "copy": new, "alteration": how})
        k += per_alteration
    test = [row(r, r["image_id"], r["lesion_id"]) for _, r in test_rows.iterrows()]
    for i, (_, r) in enumerate(train.iloc[k:k + 2 * test_shared].iterrows()):
        how = "identical" if i < test_shared else "jpeg"
        img = None if how == "identical" else Image.open(image_path(r["image_id"])).convert("RGB")
        new = f"TEST_{how}_{r['image_id']}"
        test.append(row(r, new, f"HAM_T{r['lesion_id'][4:]}", img, quality=35,
                        alteration=how))
        truth.append({"original": r["image_id"], "copy": new, "alteration": f"test-{how}"})
    write_set(out / "train", rows)
    write_set(out / "test", test)
    pd.DataFrame(truth).to_csv(out / "truth.csv", index=False)
    print(f"{out}: train {len(rows)} images ({originals} originals, {len(truth)} planted "
          f"copies in all), test {len(test)}")


def hash_bits(folder: Path, ids: list[str]) -> np.ndarray:
    """Hamming distances (bits) between the 64-bit perceptual hashes of the images ``ids``
    in ``folder``, all pairs (``len(ids)`` squared)."""
    from skinfeat.evaluate.audit_hash import phash

    images = folder / "HAM10000_images_part_1"
    words = np.array([int(str(phash(str(images / f"{i}.jpg"))), 16) for i in ids],
                     dtype=np.uint64)
    xor = (words[:, None] ^ words[None, :]).view(np.uint8).reshape(len(ids), len(ids), 8)
    return np.unpackbits(xor, axis=2).sum(2)


def rates(flag: np.ndarray, truth: np.ndarray) -> dict:
    """Recall and precision of the flagged pairs against the planted ones."""
    tp = int((flag & truth).sum())
    fp = int((flag & ~truth).sum())
    return {"recall": round(tp / max(1, truth.sum()), 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None, "false_pairs": fp}


def measure(out: Path, thresholds: list[float]) -> dict:
    """Per alteration: the cosine rule alone ("before") at a sweep of thresholds, and at the
    default threshold with the hash rule added ("after": cosine >= HASH_COSINE and phash
    distance <= HASH_BITS), among the originals and that alteration's copies."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import skinfeat
    from skinfeat.embed.cache import read_cache
    from skinfeat.evaluate.audit_hash import thumbnail_correlation
    from skinfeat.evaluate.audit_search import normalise
    from skinfeat.workflows.audit import (
        DEFAULT_THRESHOLD,
        HASH_BITS,
        HASH_CORRELATION,
        HASH_COSINE,
    )

    truth = pd.read_csv(out / "truth.csv")
    c = read_cache(out / "train.h5")
    ids = list(c.image_ids.astype(str))
    pos = {i: k for k, i in enumerate(ids)}
    x = normalise(c.embeddings)
    sim = x @ x.T
    bits = hash_bits(out / "train", ids)
    is_orig = np.array([i.startswith("ISIC_") for i in ids])
    so = sim[np.ix_(is_orig, is_orig)].copy()
    np.fill_diagonal(so, -1)
    upper = np.triu(np.ones_like(sim, dtype=bool), 1)
    distinct = upper & is_orig[:, None] & is_orig[None, :]
    after_rule = (sim >= DEFAULT_THRESHOLD) & upper
    ci, cj = np.nonzero(upper & (sim >= HASH_COSINE) & (sim < DEFAULT_THRESHOLD)
                        & (bits <= HASH_BITS))
    images = out / "train" / "HAM10000_images_part_1"
    corr = thumbnail_correlation([(str(images / f"{ids[a]}.jpg"), str(images / f"{ids[b]}.jpg"))
                                  for a, b in zip(ci, cj, strict=True)])
    after_rule[ci[corr >= HASH_CORRELATION], cj[corr >= HASH_CORRELATION]] = True
    truth_pairs = {frozenset((pos[a], pos[b])) for a, b in zip(truth["original"], truth["copy"],
                                                               strict=True) if b in pos}
    planted_c = np.array([frozenset((a, b)) in truth_pairs for a, b in zip(ci, cj, strict=True)],
                         dtype=bool)
    result = {"originals": int(is_orig.sum()),
              "distinct_max_cosine": np.quantile(so.max(1), [0.5, 0.99, 1.0]).round(4).tolist(),
              "distinct_pairs": int(distinct.sum()),
              "distinct_pairs_flagged_after": int((after_rule & distinct).sum()),
              "distinct_min_phash_at_hash_cosine": int(bits[distinct & (sim >= HASH_COSINE)]
                                                       .min()),
              "hash_candidates": int(len(ci)),
              "hash_candidates_distinct": int((~planted_c).sum()),
              "hash_candidates_distinct_max_correlation": round(float(np.nanmax(
                  corr[~planted_c], initial=-1.0)), 4),
              "hash_candidates_planted_min_correlation": round(float(np.nanmin(
                  corr[planted_c], initial=2.0)), 4),
              "rule": {"threshold": DEFAULT_THRESHOLD, "hash_cosine": HASH_COSINE,
                       "hash_bits": HASH_BITS, "thumbnail_correlation": HASH_CORRELATION},
              "per_alteration": {}}
    for how, t in truth[~truth["alteration"].str.startswith("test")].groupby("alteration"):
        copies = np.array([pos[i] for i in t["copy"]])
        orig = np.array([pos[i] for i in t["original"]])
        rows = is_orig.copy()
        rows[copies] = True
        scope = upper & rows[:, None] & rows[None, :]     # originals + this alteration's copies
        planted = np.zeros_like(scope)
        planted[np.minimum(orig, copies), np.maximum(orig, copies)] = True
        cos_copy, bit_copy = sim[orig, copies], bits[orig, copies]
        per = {"copies": len(t),
               "copy_cosine_min_median": [round(float(cos_copy.min()), 4),
                                          round(float(np.median(cos_copy)), 4)],
               "copy_phash_median_max": [float(np.median(bit_copy)), int(bit_copy.max())]}
        for th in thresholds:
            per[f"before_{th:g}"] = rates((sim >= th) & scope, planted & scope)
        per["after"] = rates(after_rule & scope, planted & scope)
        result["per_alteration"][how] = per
    audit = skinfeat.audit(out / "test", out / "test.h5", against=out / "train",
                           against_cache=out / "train.h5", out=out / "audit-test-vs-train")
    across = audit.duplicates[audit.duplicates["kind"] == "across_sets"]
    found = {frozenset(p) for p in zip(across["image_id_a"], across["image_id_b"], strict=True)}
    by_cosine = {frozenset(p) for p, r in zip(zip(across["image_id_a"], across["image_id_b"],
                                                  strict=True), across["rule"], strict=True)
                 if r == "cosine"}
    for how, t in truth[truth["alteration"].str.startswith("test")].groupby("alteration"):
        pairs = [frozenset(p) for p in zip(t["copy"], t["original"], strict=True)]
        result["per_alteration"][how] = {
            "copies": len(t), "before": round(sum(p in by_cosine for p in pairs) / len(t), 4),
            "after": round(sum(p in found for p in pairs) / len(t), 4)}
    planted_pairs = {frozenset(p) for p in zip(truth["copy"], truth["original"], strict=True)}
    result["across_set_pairs"] = {"before": len(by_cosine), "after": len(found),
                                  "planted_after": len(found & planted_pairs)}
    train_audit = skinfeat.audit(out / "train", out / "train.h5", out=out / "audit-train")
    result["train_audit_counts"] = train_audit.counts
    print(json.dumps(result, indent=1))
    return result


def flipped(cache: Path, data: Path, rate: float, seed: int, top: int | None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import skinfeat

    ds = skinfeat.load_dataset(data, images=False)
    rng = np.random.default_rng(seed)
    table = ds.table.copy()
    flip = rng.random(len(table)) < rate
    classes = np.array(ds.classes)
    new = [rng.choice(classes[classes != d]) for d in table.loc[flip, "dx"]]
    table.loc[flip, "dx"] = new
    table["label"] = table["dx"].map({c: i for i, c in enumerate(ds.classes)}).astype(np.int64)
    noisy = type(ds)(**{**ds.__dict__, "table": table})
    t0 = time.perf_counter()
    res = skinfeat.audit(noisy, cache, out=None, duplicates=False, outliers=False)
    issues = set(res.label_issues["image_id"])
    flipped_ids = set(table.loc[flip, "image_id"])
    hit = len(issues & flipped_ids)
    out = {"rows": len(table), "flipped": int(flip.sum()), "flagged": len(issues),
           "recall": round(hit / max(1, flip.sum()), 4),
           "precision": round(hit / max(1, len(issues)), 4),
           "seconds": round(time.perf_counter() - t0, 1)}
    ranked = list(res.label_issues["image_id"])
    k = int(flip.sum())
    out[f"recall_in_top_{k}"] = round(len(set(ranked[:k]) & flipped_ids) / k, 4)
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["build", "measure", "flipped"])
    p.add_argument("--out", type=Path, default=Path("/tmp/planted"))
    p.add_argument("--originals", type=int, default=600)
    p.add_argument("--per-alteration", type=int, default=100)
    p.add_argument("--test-distinct", type=int, default=150)
    p.add_argument("--test-shared", type=int, default=50)
    p.add_argument("--thresholds", default="0.9,0.92,0.94,0.95,0.96,0.97,0.98")
    p.add_argument("--cache", type=Path,
                   default=FULL.parent / "ham10000-mobilenetv2-embeddings.h5")
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.step == "build":
        build(a.out, a.originals, a.per_alteration, a.test_distinct, a.test_shared)
    elif a.step == "measure":
        measure(a.out, [float(t) for t in a.thresholds.split(",")])
    else:
        flipped(a.cache, FULL, a.rate, a.seed, None)


if __name__ == "__main__":
    main()
