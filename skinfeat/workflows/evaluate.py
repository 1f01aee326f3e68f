"""evaluate as a function: a trained model (a run folder, or a loaded ``Model``) scored on
another labelled set by ``deploy.evaluation.evaluate_run``; the CLI's ``evaluate`` and
``skinfeat.evaluate_model`` call it."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..deploy.evaluation import EvaluationResult, evaluate_run
from ..deploy.inputs import cache_paths
from ..deploy.model import Model
from ..embed.embedding_cache import Caches, PathLike


def evaluate_model(model: Model | PathLike, data: PathLike, out: PathLike | None = None, *,
                   preset: str = "auto", spec: PathLike | None = None,
                   columns: dict | None = None, weights_file: PathLike | None = None,
                   device: str = "auto", batch_size: int = 32, num_workers: int = 0,
                   include_seen: bool = False, embeddings: Caches | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_start: Callable[[int], None] | None = None,
                   subgroups: str | Sequence[str] | None = None) -> EvaluationResult:
    """Score a trained model (a run folder or a ``Model``) on another labelled set, read as
    the model's task (``skinfeat evaluate``); ``out=None``: ``MODEL/eval-<data name>``. (Not
    ``evaluate``: ``skinfeat.evaluate`` is the metrics and reports subpackage.) ``subgroups``:
    the fields of the subgroup tables (None: the scored set's default ones, "none": none);
    ``write_card(model)`` then shows the evaluation in the model card. ``weights_file``,
    ``device``, ``batch_size`` and ``num_workers`` load a run folder (a ``Model`` has its
    own)."""
    if not isinstance(model, Model):
        model = Model(model, weights_file=weights_file, device=device, batch_size=batch_size,
                      num_workers=num_workers)
    return evaluate_run(model, data, out, layout=preset, spec=spec, columns=columns,
                        include_seen=include_seen, progress=progress, on_start=on_start,
                        cache=None if embeddings is None else cache_paths(embeddings),
                        subgroups=subgroups)
