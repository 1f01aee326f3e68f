"""The model card as the Hugging Face Hub reads it: the bundle's ``README.md``, YAML metadata
(licence, data set, metrics with their 95 % intervals, tags) above the markdown card, written with
``huggingface_hub.ModelCard`` / ``ModelCardData``. A run folder is then ready for
``huggingface_hub.upload_folder``. Runs written before this carry ``MODEL_CARD.md`` instead
(``OLD_CARD``); nothing reads the card to load a model, so they load as before."""
from __future__ import annotations

import math
import re
from pathlib import Path

from ..atomic import write_text

CARD = "README.md"
OLD_CARD = "MODEL_CARD.md"
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")
# Hub licence ids of the data licences that DatasetSpec.citation names (weights trained on the
# data are derived from it, so the card carries the data's licence; the code is Apache-2.0).
LICENCES = {"CC BY-NC 4.0": "cc-by-nc-4.0", "CC BY 4.0": "cc-by-4.0",
            "CC BY-NC-SA 4.0": "cc-by-nc-sa-4.0", "CC0": "cc0-1.0"}


def licence_of(citation: str) -> str:
    found = [hub for text, hub in LICENCES.items()
             if re.search(re.escape(text) + r"(?![\w-])", citation or "")]
    return found[0] if len(found) == 1 else "other"


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else round(value, 4)


def card_data(name: str, info: dict, metrics: dict, ci: dict, citation: str = ""):
    """``ModelCardData`` of one run: ``info`` is metrics.json's ``info`` (the run summary)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = str(info.get("dataset") or "unknown")
    split = str(info.get("scored_on") or "test")
    intervals, results = {}, []
    for key in HEADLINE:
        value, (low, high) = _number(metrics.get(key)), (list(ci.get(key) or []) + [None] * 2)[:2]
        if value is None:
            continue
        low, high = _number(low), _number(high)
        intervals[key] = {"value": value, "ci95_low": low, "ci95_high": high}
        shown = f" (95% CI {low}-{high})" if low is not None and high is not None else ""
        results.append(EvalResult(
            task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
            dataset_split=split, metric_type="f1" if key == "macro_f1" else key,
            metric_value=value, metric_name=f"{key}{shown}",
            metric_args={"average": "macro"} if key == "macro_f1" else None))
    tags = ["skinfeat", "dermatology", "skin-lesion", "medical-imaging", "not-a-medical-device",
            f"model:{info.get('model', 'unknown')}"]
    if info.get("fields"):
        tags.append("multimodal")
    return ModelCardData(
        model_name=name, license=licence_of(citation), library_name="skinfeat",
        pipeline_tag="image-classification", datasets=[dataset], tags=tags,
        metrics=["accuracy", "balanced_accuracy", "f1"], eval_results=results or None,
        skinfeat={"scored_on": split, "metrics_ci95": intervals,
                  "classes": list(info.get("classes") or []),
                  "data_licence": citation or "not recorded"})


def write_hub_card(out: Path, body: str, data) -> Path:
    """``out/README.md``: ``data`` (``ModelCardData``) as YAML front matter above ``body``."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    write_text(out / CARD, str(card))
    return out / CARD
