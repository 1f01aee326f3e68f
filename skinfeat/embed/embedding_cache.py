"""``EmbeddingCache``: the Python API's handle on an HDF5 embedding cache (stage one's output),
read on first use."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .cache import CacheContents
    from .extract import ExtractResult


@dataclass
class EmbeddingCache:
    """An HDF5 embedding cache on disk (stage one's output), read on first use."""
    path: Path
    _contents: CacheContents | None = field(default=None, repr=False)
    run: ExtractResult | None = field(default=None, repr=False)   # extract's counts, failures

    @property
    def contents(self) -> CacheContents:
        if self._contents is None:
            from .cache import read_cache

            self._contents = read_cache(self.path)
        return self._contents

    @property
    def image_ids(self) -> list[str]:
        return list(self.contents.image_ids)

    @property
    def embeddings(self) -> np.ndarray:
        return self.contents.embeddings

    @property
    def identity(self) -> dict:
        return dict(self.contents.identity or {})

    def __len__(self) -> int:
        return len(self.contents.image_ids)


def open_cache(path: str | Path) -> EmbeddingCache:
    """An embedding cache file (any HDF5 file with image_id and embedding), read now: a file
    that is not one fails here, naming it."""
    out = EmbeddingCache(Path(path))
    _ = out.contents   # read now, so that a bad file fails here
    return out


PathLike = str | Path
# One cache or several (fused per image, in order): what the API's ``caches`` take.
Caches = PathLike | EmbeddingCache | Sequence[PathLike | EmbeddingCache]
