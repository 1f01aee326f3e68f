"""skinfeat: multi-modal skin lesion classification on cached frozen-backbone embeddings.

Stage one (``extract``) embeds every image once into an HDF5 cache; stage two (``fit``,
``cross_validate``, ``tune``) trains the fusion head or LightGBM on the cache in seconds;
``load_model(...).predict`` scores raw images or cached embeddings with metadata. See
``skinfeat.api`` and the README's "Python API" section.
"""
from __future__ import annotations

from .version import __version__

__all__ = ["AuditResult", "CVResult", "CompareResult", "Dataset", "DatasetSpec", "EmbeddingCache",
           "EvaluationResult", "FitResult", "FusionHeadClassifier", "ImagePrediction",
           "Model", "Predictions", "Recipe", "RunConfig", "RunSummary", "Task",
           "audit", "backbones", "check_dataset", "compare", "cross_validate",
           "download_ham10000", "drop_label_issues", "evaluate_model", "extract", "fit",
           "load_dataset",
           "load_model", "make_recipe", "merge_caches", "merge_duplicate_groups", "open_cache",
           "run_demo",
           "serve", "tune", "unpack", "weights_location", "write_card", "__version__"]


def __getattr__(name: str):
    # Lazy (PEP 562): ``import skinfeat`` and ``skinfeat --help`` stay fast; torch, timm and
    # pandas load on the first use of the API.
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'skinfeat' has no attribute {name!r}")
