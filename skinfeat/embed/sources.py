"""Are these caches a model's embedding sources, in its training order?

A model on fused caches (``--cache A.h5 --cache B.h5``) takes each source's embeddings at fixed
columns, so predict and evaluate check, position by position, the number of caches and each
one's width and encoder identity against the bundle's record (``fuse_caches``). Sources that
neither tells apart (plain h5py files of one width) are compared by value profile, the mean of
each dimension recorded at training time; then by file name; else a warning says the order is
not verified.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from .cache_check import CacheContents
from .cache_identity import CacheError, comparable, source_identities

log = logging.getLogger(__name__)


# Identity keys that do not change which encoder made an embedding: the rows or views a cache
# holds (a shard, its views), or only its rounding (the precision, an int8 model's calibration
# sample: an evaluation set's int8 cache is calibrated on its own images; how the views were
# turned: the decoded image or the squashed tensor, extract.TURNED_TENSOR).
ROW_KEYS = ("shard", "views")
ROUNDING_KEYS = ("precision", "calibration", "view_transform")


def encoder_identity(identity: dict) -> dict:
    """What makes the embedding function: an identity without rows, views and rounding (and,
    for skinfeat's, normalised: defaults filled, hint keys such as ``location`` dropped)."""
    return {k: v for k, v in comparable(identity).items() if k not in ROW_KEYS + ROUNDING_KEYS}


def extract_hint(had: dict, differ: set[str]) -> str:
    """Where a cache's encoder identity differs from the model's (``had``) only in the keys
    ``differ`` of stage-one options (the defaults changed under issue 29: ``--layers last3``,
    ``--average-views all``), the flags that extract a cache the way the model's was: ""
    otherwise."""
    from .turns import preset_name

    if not differ or not differ <= {"layers", "average_views", "pool"}:
        return ""
    named = preset_name(had.get("average_views") or ())
    flags = []
    if "pool" in differ and had.get("pool"):
        flags.append(f"--pool {had['pool']}")
    if "layers" in differ:       # no key: a cache made before --layers, i.e. last
        flags.append(f"--layers {had.get('layers') or 'last'}")
    if "average_views" in differ and named:
        flags.append(f"--average-views {named}")
    return (f"; extract this set as the model's cache was made: skinfeat extract ... "
            f"{' '.join(flags)}" if flags else "")


def look_alike(identities: list[dict], dims: list[int]) -> list[list[int]]:
    """Groups of sources (indices) that neither their width nor their identity tell apart,
    e.g. two plain h5py files of one width: a swap of them is invisible to both checks."""
    groups: dict[str, list[int]] = {}
    for k, (ident, dim) in enumerate(zip(identities, dims, strict=False)):
        groups.setdefault(json.dumps([encoder_identity(ident), dim], sort_keys=True), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def value_profile(embeddings: np.ndarray) -> list[float]:
    """The mean of each dimension (4 significant digits). An encoder's pattern over its
    dimensions stays while the images change (measured with random-weight test_convnext and
    test_vit on synthetic images: correlation 0.99 between the profile of 100 images and the
    embedding of 1 other image, at most 0.17 in size between two encoders or two seeds), so it
    tells sources of one width apart where nothing else does. Features standardised per
    dimension have a flat profile: nothing to tell apart."""
    return [float(f"{v:.4g}") for v in np.asarray(embeddings, np.float64).mean(axis=0)]


def profile_similarity(a, b) -> float:
    """Correlation of two value profiles (0 when either is flat, e.g. standardised features)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b) or len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# A swap is called when the swapped order's mean profile correlation is at least SWAP_CLEAR and
# beats the given order's by SWAP_MARGIN (measured: own encoder 0.99, another at most 0.17).
SWAP_CLEAR, SWAP_MARGIN = 0.8, 0.5


def _nth(k: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(k, f"number {k}")


def check_sources(recorded: dict, dim: int, paths: list[str],
                  parts: list[CacheContents]) -> None:
    """Refuse caches that are not a model's embedding sources in its training order.

    ``recorded`` is the bundle's identity (fused or single), ``dim`` its embedding width. Checked
    position by position: the number of caches, each one's width and encoder identity (a cache
    that matches another position is named with where it must go). Sources that neither tell
    apart (plain h5py files of one width) are compared by their value profiles and file names;
    when those cannot decide either, a warning says that the order is not verified.
    """
    want = source_identities(recorded)
    dims = [int(d) for d in recorded.get("dims", [dim])]
    files = [str(f) for f in recorded.get("sources", [])]
    names = [Path(f).name for f in files]

    def describe(k: int) -> str:
        ident = want[k]
        what = ident.get("backbone") or ("made outside skinfeat" if not ident else
                                         json.dumps(encoder_identity(ident), sort_keys=True)[:60])
        return f"{k + 1}. {what}, {dims[k]}-d" + (f", trained on {names[k]}" if k < len(names)
                                                  else "")

    order = "; ".join(describe(k) for k in range(len(want)))
    label = " + ".join(map(str, paths))
    if len(parts) != len(want):
        raise CacheError(f"{label}: {len(parts)} cache file(s) given, but the model was trained "
                         f"on {len(want)} embedding source(s); pass one --cache per source, in "
                         f"training order: {order}")
    fits = [[p.dim == dims[k] and encoder_identity(p.identity) == encoder_identity(want[k])
             for k in range(len(want))] for p in parts]
    for i, (path, part) in enumerate(zip(paths, parts, strict=False)):
        if fits[i][i]:
            continue
        j = next((k for k in range(len(want)) if fits[i][k]), None)
        if j is not None:
            raise CacheError(f"{path}: given as the {_nth(i + 1)} --cache, but it holds the "
                             f"model's source {j + 1} and must come {_nth(j + 1)}; pass the "
                             f"caches in training order: {order}")
        where = f"the model's source {i + 1} ({describe(i)})" if len(want) > 1 else "the model"
        have, had = encoder_identity(part.identity), encoder_identity(want[i])
        differ = {k for k in set(have) | set(had) if have.get(k) != had.get(k)}
        if part.dim != dims[i]:
            raise CacheError(f"{path}: {part.dim}-d embeddings, but {where} takes "
                             f"{dims[i]}-d ones" + (f"; pass the caches in training order: "
                                                   f"{order}" if len(want) > 1 else "")
                             + extract_hint(had, differ))
        diff = "; ".join(f"{k}: {json.dumps(have.get(k))[:60]} here, "
                         f"{json.dumps(had.get(k))[:60]} in training" for k in sorted(differ))
        raise CacheError(f"{path}: made with another encoder than {where} was trained on "
                         f"({diff})" + extract_hint(had, differ))
    for path, part, ident in zip(paths, parts, want, strict=False):
        drift = {k: (part.identity.get(k), ident.get(k)) for k in ROUNDING_KEYS
                 if part.identity.get(k) != ident.get(k)}
        if drift:
            log.warning("%s: the same encoder at another rounding than in training (%s): "
                        "scores may shift slightly", path, "; ".join(
                            f"{k}: {a!r} here, {b!r} in training"[:120]
                            for k, (a, b) in drift.items()))
    profiles = recorded.get("profiles")
    if not (isinstance(profiles, list) and len(profiles) == len(want)):
        profiles = None   # a bundle made before profiles were recorded
    for group in look_alike(want, dims):
        _check_look_alikes(group, profiles, [str(p) for p in paths], parts, names, order)


def _check_look_alikes(group: list[int], profiles: list | None, paths: list[str],
                       parts: list[CacheContents], names: list[str], order: str) -> None:
    """The order of sources that width and identity cannot tell apart: by value profile (when
    the bundle recorded them), else by file name (the training files in another order)."""
    perms = list(itertools.permutations(group))
    if profiles and all(isinstance(profiles[k], list) for k in group):
        mine = {k: value_profile(parts[k].embeddings) for k in group}
        score = {q: np.mean([profile_similarity(mine[k], profiles[m])
                             for k, m in zip(group, q, strict=False)])
                 for q in perms}
        given, best = tuple(group), max(perms, key=score.__getitem__)
        if best != given and score[best] >= SWAP_CLEAR and \
                score[best] - score[given] >= SWAP_MARGIN:
            k, m = next((k, m) for k, m in zip(group, best, strict=False) if k != m)
            raise CacheError(f"{paths[k]}: given as the {_nth(k + 1)} --cache, but its values "
                             f"match the model's source {m + 1} (profile correlation "
                             f"{profile_similarity(mine[k], profiles[m]):.2f}, against "
                             f"{profile_similarity(mine[k], profiles[k]):.2f} for source {k + 1})"
                             f" and it must come {_nth(m + 1)}; pass the caches in training "
                             f"order: {order}")
        if score[given] >= SWAP_CLEAR and all(score[given] - score[q] >= SWAP_MARGIN
                                              for q in perms if q != given):
            log.info("caches %s: order verified by value profile (correlation %.2f)",
                     ", ".join(paths[k] for k in group), score[given])
            return
    given_names = [Path(paths[k]).name for k in group]
    trained_names = [names[k] for k in group] if names else []
    if trained_names and len(set(trained_names)) == len(group) and \
            sorted(given_names) == sorted(trained_names) and given_names != trained_names:
        k = next(k for k, a, b in zip(group, given_names, trained_names, strict=False) if a != b)
        m = group[trained_names.index(given_names[group.index(k)])]
        raise CacheError(f"{paths[k]}: given as the {_nth(k + 1)} --cache, but the model was "
                         f"trained with {given_names[group.index(k)]} as source {m + 1}: it must "
                         f"come {_nth(m + 1)}; pass the caches in training order: {order}")
    log.warning("caches %s: same width and no identity that tells them apart, and their values "
                "do not decide either: their order cannot be checked; make sure it is the "
                "training order (%s)", ", ".join(paths[k] for k in group), order)
