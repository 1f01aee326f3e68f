"""The typed summary of a fit-head run: what the report, the model card, the CLI and
``metrics.json`` (its ``"info"`` entry) say about the run besides the metrics.

``RunSummary.to_dict()`` writes the keys ``metrics.json`` always had (plus
``format``); ``from_dict`` reads them back, refusing an unknown key with one line that
names it, so a reader of an older or newer file knows what it got.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

from ..evaluate.metrics import headline
from ..evaluate.model_text import model_words, random_sources, stopping_text
from ..schema import SchemaError

FORMAT = 1


@dataclass
class RunSummary:
    """Protocol, sizes, sources, calibration and encoding of one fit-head run."""
    model: str                       # head | lgbm
    config: dict                     # the trained model's settings (HeadConfig / LGBMConfig)
    best_epoch: int | None
    epochs_run: int | None
    split: str                       # lesion | image | none | by:COLUMN=VALUE
    protocol: str                    # the split in words
    select_on: str                   # the part that stops early and calibrates
    scored_on: str                   # test, or select_on for a split without one
    seed: int
    dataset: str
    task: str
    classes: list[str]
    class_names: dict[str, str]
    group: str                       # what groups the images: lesion, patient, image
    fields: list[str]                # the data set's metadata fields
    reference_recipe: bool
    sizes: dict[str, int]            # images per part
    lesions: dict[str, int]          # groups per part
    without_embedding: int           # rows of the table left out: no embedding in the cache
    cache: str
    identity: dict
    weights: str
    random_weights: bool
    sources: list[dict]              # each embedding source: cache, backbone, dim
    temperature: float
    calibration: str                 # the calibrator in words
    threshold: float | None          # a binary task's decision threshold
    tta: bool
    tta_models: str                  # what --tta did, in words
    encoding: str                    # the metadata encoder in words
    skinfeat: str                    # the version that trained it
    embed_dim: int
    meta_features: list[str]
    sources_split: dict | None = None   # a by: split: column, trained_on and scored_on values
    fallback: str = "none"           # the image-only fallback, in words (how many rows it scored)
    format: int = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "metrics.json") -> RunSummary:
        """A summary from ``metrics.json``'s ``"info"``; an unknown or missing key is one error
        naming ``source`` and the key."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"expected a table, got {type(d).__name__}", "info", source)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SchemaError("unknown key in a run summary", f"info.{unknown[0]}", source)
        version = d.get("format", FORMAT)
        if not isinstance(version, int) or version > FORMAT:
            raise SchemaError(f"summary version {version!r} is newer than this skinfeat's "
                              f"({FORMAT})", "info.format", source)
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = [n for n in names if n not in d and n not in optional]
        if missing:
            raise SchemaError("missing from the run summary", f"info.{sorted(missing)[0]}",
                              source)
        return cls(**{k: d[k] for k in names if k in d})

    @property
    def scored_size(self) -> int:
        """Images in the scored part."""
        return self.sizes[self.scored_on]

    @property
    def model_words(self) -> str:
        """The model and what its fit chose (epoch, boosting round, C), in words."""
        return model_words(self)

    @property
    def stopping(self) -> str:
        """The stopping rule and the part that calibrates, in words."""
        return stopping_text(self)

    @property
    def random_note(self) -> str:
        """The CLI's RANDOM-weights note: the whole run, or the fused sources that were random;
        "" for real weights."""
        some = random_sources(self.identity)
        if some:
            return (f"NOTE: RANDOM backbone weights in {', '.join(some)}: those embeddings "
                    "carry no image knowledge.")
        return "NOTE: RANDOM backbone weights: these numbers only show the pipeline works." \
            if self.random_weights else ""

    @property
    def headline(self) -> tuple[str, ...]:
        """The metrics this run's reports lead with (the task's)."""
        return headline(len(self.classes))
