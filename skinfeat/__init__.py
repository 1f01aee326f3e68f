"""skinfeat: multi-modal skin lesion classification on cached frozen-backbone embeddings.

Stage one (``extract``) embeds every image once into an HDF5 cache; stage two (``fit``,
``cross_validate``, ``tune``) trains the fusion head or LightGBM on the cache in seconds;
``load_model(...).predict`` scores raw images or cached embeddings with metadata. See
``skinfeat.api`` and the README's "Python API" section.
"""
from __future__ import annotations

from .errors import SkinfeatError  # noqa: F401  (public: in __all__, from PUBLIC)
from .public import PUBLIC
from .version import __version__  # noqa: F401  (public: in __all__, from PUBLIC)

__all__ = list(PUBLIC)


def __getattr__(name: str):
    # Lazy (PEP 562): ``import skinfeat`` and ``skinfeat --help`` stay fast; torch, timm and
    # pandas load on the first use of the API.
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'skinfeat' has no attribute {name!r}")
