"""Perceptual hashes of the image files, and every pair of them at most a few bits apart.

The second duplicate rule of the audit: resizing and strong JPEG re-encoding move an encoder's
embedding of a small image far more than its 64-bit perceptual hash (``imagehash.phash``: the
signs of the low-frequency DCT of a 32 x 32 grey thumbnail). ``close_pairs`` finds every pair
of hashes within ``bits`` bits without comparing all pairs: the 64 bits are cut into ``bits + 1``
chunks, and two hashes that differ in at most ``bits`` bits agree on one chunk at least
(pigeonhole), so only hashes that share a chunk value are compared. Dermoscopic images look
alike to a 64-bit hash (a dark disc on skin), so a pair it finds is confirmed by the
correlation of the two images' grey thumbnails (``thumbnail_correlation``).
"""
from __future__ import annotations

import logging

import numpy as np

from ..data.images import open_image

log = logging.getLogger(__name__)

PART = 2048        # query hashes per step: bounds the candidate arrays' memory


def phash(locator: str):
    """The ``imagehash.ImageHash`` of one image (a file or an HDF5 locator)."""
    import imagehash

    with open_image(locator) as img:
        return imagehash.phash(img.convert("RGB"))


def thumbnail(locator: str, side: int = 64) -> np.ndarray:
    """The image as a ``side`` x ``side`` grey thumbnail, standardised (mean 0, sd 1): two
    copies of one picture, resized, re-encoded or with brightness and contrast changed, give
    thumbnails that correlate at about 0.99."""
    from PIL import Image

    with open_image(locator) as img:
        grey = img.convert("L").resize((side, side), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float64).ravel()
    return (g - g.mean()) / max(float(g.std()), 1e-9)


def thumbnail_correlation(pairs: list[tuple[str, str]]) -> np.ndarray:
    """The correlation of the grey thumbnails of each pair of images (NaN: unreadable)."""
    seen: dict[str, np.ndarray | None] = {}
    out = np.full(len(pairs), np.nan)
    for k, (a, b) in enumerate(pairs):
        for loc in (a, b):
            if loc not in seen:
                try:
                    seen[loc] = thumbnail(loc)
                except (OSError, ValueError, KeyError):
                    seen[loc] = None
        ta, tb = seen[a], seen[b]
        if ta is not None and tb is not None:
            out[k] = float(ta @ tb) / len(ta)
    return out


def hash_words(locators: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's phash as an unsigned 64-bit word, and which images could be hashed (a
    missing or unreadable file: False, its word 0)."""
    words = np.zeros(len(locators), dtype=np.uint64)
    ok = np.zeros(len(locators), dtype=bool)
    for k, loc in enumerate(locators):
        if not loc:
            continue
        try:
            words[k] = np.uint64(int(str(phash(loc)), 16))
            ok[k] = True
        except (OSError, ValueError, KeyError) as exc:
            log.debug("no perceptual hash for %s: %s", loc, exc)
    return words, ok


def bit_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between 64-bit words, element by element (``np.bitwise_count`` from
    numpy 2.0; before it, the set bits of the words' bytes)."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    bits = np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1)
    return bits.sum(axis=-1, dtype=np.int64)


def close_pairs(a: np.ndarray, bits: int, b: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of words at most ``bits`` bits apart: ``(i, j, distance)`` with ``i < j``
    within ``a`` (``b`` None), else ``i`` in ``a`` and ``j`` in ``b``; each pair once."""
    same = b is None
    ref = a if b is None else b
    edges = np.linspace(0, 64, bits + 2).round().astype(np.uint64)
    found: list[np.ndarray] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        key_a, key_r = (a >> lo) & mask, (ref >> lo) & mask
        order = np.argsort(key_r, kind="stable")
        sorted_r = key_r[order]
        for p in range(0, len(a), PART):
            start = np.searchsorted(sorted_r, key_a[p:p + PART], "left")
            count = np.searchsorted(sorted_r, key_a[p:p + PART], "right") - start
            ii = np.repeat(np.arange(p, p + len(start)), count)
            offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            jj = order[np.repeat(start, count) + offset]
            keep = ii < jj if same else np.ones(len(ii), dtype=bool)
            ii, jj = ii[keep], jj[keep]
            near = bit_distance(a[ii], ref[jj]) <= bits
            found.append(ii[near] * len(ref) + jj[near])
    code = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    i, j = code // len(ref), code % len(ref)
    return i, j, bit_distance(a[i], ref[j])
