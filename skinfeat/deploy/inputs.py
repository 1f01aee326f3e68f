"""The Python API's arguments, checked and coerced where they enter (``skinfeat.api``).

A notebook user passes what they have: one path or a list of them, a DataFrame of metadata,
an in-memory (N, D) array of embeddings. What fits is coerced here; what does not is refused
in one line that names the argument: ``TypeError`` for a wrong kind of value (``recipe={...}``,
``metadata={...}``, a DataFrame where a dataset is expected), ``ValueError`` for a value out of
range or of the wrong shape (an array whose width is not the model's). The checks live here so
that ``api.py`` stays a list of small calls. (``FusionHeadClassifier`` checks its own
parameters at ``fit``, in ``learn/sklearn.py``: a lower layer.)
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ArgumentTypeError, InputError


def _kind(value: Any) -> str:
    return type(value).__name__


def one_or_many(value: Any, name: str, what: str = "path") -> list[str]:
    """One ``str``/``Path`` or a sequence of them -> a list of strings (a string is one item,
    never a sequence of characters)."""
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, (bytes, dict, pd.DataFrame)) or not isinstance(
            value, (Sequence, np.ndarray, pd.Series, pd.Index)):
        raise ArgumentTypeError(f"{name}: expected a {what} or a list of {what}s, "
                                f"got {_kind(value)}")
    items = list(value)
    bad = [v for v in items if not isinstance(v, (str, Path))]
    if bad:
        raise ArgumentTypeError(f"{name}: expected a {what} or a list of {what}s, got an item of "
                        f"type {_kind(bad[0])}")
    return [str(v) for v in items]


def cache_paths(value: Any, name: str = "embeddings") -> list[str]:
    """One embedding cache or several (fused per image, in order) as file paths: a path, an
    ``EmbeddingCache`` (anything with a ``path``) or a sequence of them."""
    items = [value] if isinstance(value, (str, Path)) or hasattr(value, "path") else value
    if isinstance(items, (bytes, dict, pd.DataFrame)) or not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(f"{name}: expected a cache path, an EmbeddingCache or a list of "
                        f"them, got {_kind(value)}")
    if not items:
        raise InputError(f"{name}: give at least one embedding cache")
    out = []
    for item in items:
        item = item.path if hasattr(item, "path") else item
        if not isinstance(item, (str, Path)):
            raise ArgumentTypeError(f"{name}: expected a cache path or an EmbeddingCache, "
                                    f"got an item of type {_kind(item)}")
        out.append(str(item))
    return out


def frame(value: Any, name: str) -> pd.DataFrame | None:
    """A DataFrame (or None) as a fresh table indexed 0..N-1."""
    if value is None:
        return None
    if not isinstance(value, pd.DataFrame):
        hint = " (pd.DataFrame(...) of it, one row per image)" if isinstance(value, dict) else ""
        raise ArgumentTypeError(f"{name}: expected a pandas DataFrame{hint}, got {_kind(value)}")
    return value.reset_index(drop=True).copy()


def embedding_array(value: Any, n_rows: int | None, width: int, name: str = "embeddings"
                    ) -> np.ndarray:
    """An in-memory (N, D) array of embeddings, aligned with the metadata rows: N must equal
    their number (when given) and D the model's embedding width; every value finite."""
    array = np.asarray(value)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ArgumentTypeError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{name}: expected a 2-d array (N images, D features), got shape "
                         f"{array.shape}")
    if array.shape[1] != width:
        raise InputError(f"{name}: the array is {array.shape[1]} wide but the model takes "
                         f"{width}-d embeddings")
    if n_rows is not None and array.shape[0] != n_rows:
        raise InputError(f"{name}: {array.shape[0]} rows but metadata has {n_rows}; one "
                         "embedding per metadata row, in order")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} row(s) hold NaN or infinite values, e.g. "
                         f"row {int(np.flatnonzero(bad)[0])}")
    return array.astype(np.float32, copy=False)


def is_array(value: Any) -> bool:
    """An in-memory array of embeddings (not a cache path or a list of them)."""
    return isinstance(value, np.ndarray) or (
        hasattr(value, "__array__") and not isinstance(value, (str, Path, list, tuple)))


def prediction_table(predictor, images: Any, embeddings: Any, metadata: Any, image_ids: Any
                     ) -> tuple[pd.DataFrame, dict]:
    """``Model.predict``'s arguments -> the table ``Model.predict_table`` scores and its
    keyword arguments: image files, caches (rows looked up by image id) or an in-memory (N, D)
    array aligned with the metadata rows."""
    if (images is None) == (embeddings is None):
        raise InputError("give images (file paths) or embeddings (a cache, or an (N, D) array "
                         "aligned with the metadata rows), not both")
    table = frame(metadata, "metadata")
    ids = one_or_many(image_ids, "image_ids", "string") if image_ids is not None else None
    if images is not None:
        files = one_or_many(images, "images")
        table = pd.DataFrame(index=range(len(files))) if table is None else table
        if len(table) != len(files):
            raise InputError(f"images: {len(files)} images but {len(table)} metadata rows")
        table["path"] = files
        table["image_id"] = ids if ids is not None else [Path(f).stem for f in files]
        return table, {}
    if is_array(embeddings):
        if predictor.views:
            raise InputError("embeddings: the model averages over test-time views (--tta); "
                             "an (N, D) array has none: give the cache with its views")
        n = len(table) if table is not None else len(ids) if ids is not None else None
        array = embedding_array(embeddings, n, predictor.embed_dim)
        table = pd.DataFrame(index=range(len(array))) if table is None else table
        if ids is not None:
            table["image_id"] = ids
        elif "image_id" not in table:
            table["image_id"] = [f"row_{i}" for i in range(len(array))]
        table["path"] = table["image_id"].astype(str)
        return table, {"embeddings": array}
    caches = cache_paths(embeddings)
    if ids is not None:
        table = pd.DataFrame(index=range(len(ids))) if table is None else table
        if len(table) != len(ids):
            raise InputError(f"image_ids: {len(ids)} ids but {len(table)} metadata rows")
        table["image_id"] = ids
    elif table is None or "image_id" not in table:
        raise InputError("give image_ids, or an image_id column in metadata (or embeddings "
                         "as an (N, D) array aligned with the metadata rows)")
    table["path"] = table["image_id"].astype(str)
    return table, {"cache": caches}


def recipe_or_default(recipe: Any, name: str = "recipe"):
    """A ``RunConfig`` (``skinfeat.Recipe``), or the default one for None."""
    from ..learn.runconfig import RunConfig

    if recipe is None:
        return RunConfig()
    if not isinstance(recipe, RunConfig):
        raise ArgumentTypeError(f"{name}: expected a skinfeat.Recipe (make one with "
                        f"skinfeat.make_recipe(run={{...}}) or skinfeat.Recipe(...)), got "
                        f"{_kind(recipe)}")
    return recipe


def dataset_or_path(data: Any, name: str = "data"):
    """A loaded ``Dataset`` or a path to read one from (tables only)."""
    from ..data.datasets import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(data, images=False)
    hint = " (save it as a CSV, or use skinfeat.load_dataset)" \
        if isinstance(data, pd.DataFrame) else ""
    raise ArgumentTypeError(f"{name}: expected a Dataset (skinfeat.load_dataset) or a dataset "
                    f"folder or CSV path{hint}, got {_kind(data)}")
