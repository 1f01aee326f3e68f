"""Score a trained run on another labelled set: any preset's folder (HAM10000, the ISIC 2018 Task 3
test set, ISIC 2019/2020, PAD-UFES-20) or a generic CSV (``datasets.load_dataset``).

Images go through the ``Model`` (the backbone, transform and precision of the training cache)
and the stored calibration is applied. The report leads with ISIC 2018 Task 3's headline metric,
balanced multi-class accuracy (the mean of per-class recall), with a bootstrap 95 % CI.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_text
from ..data.datasets import DataError, load_dataset
from ..deploy.bundle_config import fold_ensemble
from ..deploy.decision import calibration_text
from ..errors import InputError
from ..evaluate.metrics import bootstrap_ci, calibrated_metrics, headline, majority_baseline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    """A model scored on another labelled set (``skinfeat evaluate``)."""
    metrics: dict                 # on the scored rows (see evaluate_metrics.json)
    bootstrap_ci95: dict          # group bootstrap intervals
    majority_baseline: dict | None
    info: dict                    # data, layout, n, coverage, overlap with training, ...
    out: Path                     # the report folder
    subgroups: object = field(default=None, repr=False)   # a SubgroupResult, or None
    _owner: object = field(default=None, repr=False, compare=False)

    @property
    def report_path(self) -> Path:
        return self.out / "evaluate_report.md"


def default_eval_dir(run: str | Path, data: str | Path) -> Path:
    data = Path(data)
    return Path(run) / f"eval-{data.stem if data.is_file() else data.resolve().name}"


def metadata_coverage(table: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, float]:
    """Share of rows with a known value, per metadata field of the model."""
    return {f: float(table[f].notna().mean()) if f in table else 0.0 for f in fields}


def metadata_note(layout: str, coverage: dict[str, float]) -> str:
    if not coverage:
        return "the model takes no metadata"
    if layout == "isic2018-test" or not any(coverage.values()):
        why = "the ISIC 2018 Task 3 test set ships no metadata" if layout == "isic2018-test" \
            else f"the data has none of the model's fields ({', '.join(coverage)})"
        return (f"**metadata missing**: {why}; every field was treated as missing, exactly as "
                "in training")
    known = ", ".join(f"{k} {100 * v:.0f} %" for k, v in coverage.items())
    return f"metadata known for {known} of images (missing values handled as in training)"


def seen_masks(run: Path, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row of ``table``: is its image, is its group (lesion, patient), one the model trained
    or early-stopped on (its ``splits.csv``)? ``None`` for a model without one."""
    path = run / "splits.csv"
    if not path.is_file():
        return None
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    saved = saved.rename(columns={"lesion_id": "group_id"})   # written before the rename
    seen = saved[saved["split"].isin(["train", "val"])]
    return (table["image_id"].isin(seen["image_id"]).to_numpy(),
            table["group_id"].isin(seen["group_id"]).to_numpy())


def seen_in_training(run: Path, table: pd.DataFrame) -> np.ndarray:
    """Rows whose image or group the model trained or early-stopped on."""
    masks = seen_masks(run, table)
    return np.zeros(len(table), dtype=bool) if masks is None else masks[0] | masks[1]


def split_overlap(run: Path, table: pd.DataFrame) -> dict[str, int]:
    """Images / lesions of the scored set that the model trained or early-stopped on."""
    masks = seen_masks(run, table)
    if masks is None:
        return {}
    image, lesion = masks
    return {"images": int(image.sum()), "lesions": int(lesion.sum()),
            "rows": int((image | lesion).sum())}


def train_labels(run: Path, classes: list[str]) -> np.ndarray | None:
    path = run / "splits.csv"
    if not path.is_file():
        return None
    saved = pd.read_csv(path, dtype=str)
    dx = saved.loc[saved["split"] == "train", "dx"]
    return dx.map({c: i for i, c in enumerate(classes)}).dropna().astype(int).to_numpy()


def model_labels(table: pd.DataFrame, classes: list[str], source: str) -> np.ndarray:
    """The scored set's class codes as the model's class indices; codes the model does not know
    are an error (a model can only be scored on its own classes)."""
    unknown = sorted(set(table["dx"]) - set(classes))
    if unknown:
        raise DataError(f"{source}: label(s) {', '.join(unknown[:5])} are not among the model's "
                        f"classes ({', '.join(classes)})")
    return table["dx"].map({c: i for i, c in enumerate(classes)}).astype(int).to_numpy()


def evaluate_run(model, data: str | Path, out: str | Path | None = None, *,
                 layout: str = "auto", spec: str | Path | None = None,
                 columns: dict | None = None, include_seen: bool = False,
                 progress: Callable[[int], None] | None = None,
                 on_start: Callable[[int], None] | None = None, cache=None,
                 subgroups: str | Sequence[str] | None = None) -> EvaluationResult:
    """Embed, predict and score ``data`` with a loaded model (``model.Model``); write
    evaluate_metrics.json, evaluate_report.md, PNGs (``out=None``: ``MODEL/eval-<data name>``).

    Images, and images of groups, that the model trained or early-stopped on are left out
    unless ``include_seen``: scores on them are optimistic. With ``cache`` (one file or several,
    fused as in training) the embeddings come from there and no image file is read; rows
    without an embedding are left out with a count. ``subgroups``: the fields of the subgroup
    tables, read in the scored set's own spec (None: its default fields, "none": no tables);
    numeric fields other than age are cut at the scored set's quartiles (the training rows
    are not at hand)."""
    from ..evaluate.subgroup_fields import analyse_subgroups, subgroup_columns

    run = model.run
    out = Path(out) if out else default_eval_dir(run, data)
    # The scored set's labels are read as the model's task (e.g. binary:mel from a 7-class set).
    dataset = load_dataset(data, layout, spec, task=model.task, images=not cache,
                           **(columns or {}))
    table, layout = dataset.table, dataset.spec.name
    subgroup_columns(subgroups, dataset.spec)   # a bad --subgroups fails before predicting
    full = dataset.with_described()             # + subgroup-only columns, never predicted on
    seen = seen_in_training(run, table)
    left_out = {"images": int(seen.sum()), "groups": int(table.loc[seen, "group_id"].nunique())}
    if seen.any() and not include_seen:
        if seen.all():
            raise DataError(f"{data}: every image (or its {dataset.spec.group_name}) was used to "
                            "train or early-stop this model; pass --include-seen to score them "
                            "anyway (optimistic)")
        log.warning("%s: %d image(s) of %d %s(s) seen in training are left out (--include-seen "
                    "keeps them)", data, left_out["images"], left_out["groups"],
                    dataset.spec.group_name)
        table = table[~seen].reset_index(drop=True)
        full = full[~seen].reset_index(drop=True)
    if on_start:
        on_start(len(table))
    preds = model.predict_table(table, progress, cache=cache)
    ok = preds.ok
    scored = table[ok].reset_index(drop=True)
    described = full[ok].reset_index(drop=True)
    if len(scored) == 0:
        raise InputError(f"{data}: no image could be read; nothing to score")
    classes = model.classes
    y = model_labels(scored, classes, str(dataset.source))
    logits, proba, decided = preds.logits[ok], preds.proba[ok], preds.decided[ok]
    metrics = calibrated_metrics(y, logits, proba, classes, decided)
    ci = bootstrap_ci(y, proba, classes, groups=scored["group_id"].to_numpy(), y_pred=decided)
    y_train = train_labels(run, classes)
    baseline = majority_baseline(y_train, y, classes) if y_train is not None and len(y_train) \
        else None
    coverage = metadata_coverage(scored, model.fields)
    overlap = split_overlap(run, scored)
    if overlap.get("rows"):
        log.warning("%s: %d image(s) (or their lesions) were used to train or early-stop the "
                    "model; these scores are optimistic", data, overlap["rows"])
    info = {"run": str(run), "data": str(data), "layout": layout, "n": int(len(scored)),
            "task": str(model.task), "classes": classes, "threshold": model.threshold,
            "unreadable": {i: e for i, e, k in zip(preds.image_ids, preds.errors, ok, strict=False)
                           if not k},
            "metadata_coverage": coverage, "metadata_note": metadata_note(layout, coverage),
            # rows with every metadata field missing, scored by the image-only fallback
            "fell_back": preds.fell_back if model.fallback is not None else None,
            "metadata_missing": bool(coverage) and (layout == "isic2018-test"
                                                    or not any(coverage.values())),
            "overlap_with_training": overlap, "include_seen": include_seen,
            "seen_in_training": left_out, "group": dataset.spec.group_name,
            "temperature": model.temperature,
            "calibration": calibration_text(model),   # an ensemble: its members'
            "model_type": model.config["model_type"], "head": model.config["head"],
            "members": len(model.members) or None,
            "backbone": " + ".join(str(i.get("backbone", "outside skinfeat"))
                                   for i in model.sources),
            "cache": [str(c) for c in cache] if cache else None,
            "weights": model.weights, "random_weights": model.random_weights,
            "identity": model.identity}
    found = analyse_subgroups(described, described, y, proba, decided, dataset.spec, classes,
                              subgroups, out)
    write_evaluate_report(out, metrics, ci, baseline, info, y, logits, classes,
                          model.calibrator, subgroups=found)
    return EvaluationResult(metrics, ci, baseline, info, out, found)


def model_kind(info: dict) -> str:
    head = info["head"]
    if fold_ensemble(info):
        return (f"fold ensemble of {info.get('members', '?')} {head.get('members')} models, "
                "calibrated probabilities averaged")
    from ..learn.models import model_class

    cls = model_class(info["model_type"])
    return f"{info['model_type']}, {cls.describe(cls.config_from(head))}"


def headline_sentence(metrics: dict, ci: dict, classes: list[str]) -> str:
    """The report's first line: balanced multi-class accuracy (the ISIC 2018 Task 3 metric), or
    ROC AUC for a binary task (the ISIC 2020 metric)."""
    from ..evaluate.report import fmt

    if len(classes) == 2:
        key, text, pct = "auc", f"ROC AUC of `{classes[1]}` (the ISIC 2020 metric)", False
    else:
        key, pct = "balanced_accuracy", True
        text = "Balanced multi-class accuracy (mean per-class recall, the ISIC 2018 Task 3 metric)"
    c = ci.get(key)
    interval = f" (95 % CI {fmt(c[0], pct)} to {fmt(c[1], pct)})" if c else ""
    return f"**{text}: {fmt(metrics[key], pct)}**{interval}"


def write_evaluate_report(out: Path, metrics: dict, ci: dict, baseline: dict | None, info: dict,
                          y: np.ndarray, logits: np.ndarray, classes: list[str],
                          calibrator, subgroups=None) -> None:
    """evaluate_metrics.json (with ``subgroups``: a ``SubgroupResult``, or None for no tables),
    evaluate_report.md and the figures."""
    from ..evaluate.report import (
        calibration_table,
        metrics_table,
        per_class_table,
        save_run_figures,
        weights_warning,
    )

    out.mkdir(parents=True, exist_ok=True)
    t = info["temperature"]
    payload = {"model": metrics, "bootstrap_ci95": ci, "majority_baseline": baseline,
               "info": info}
    if subgroups is not None:
        payload["subgroups"] = subgroups.to_dict()
    write_text(out / "evaluate_metrics.json", json.dumps(payload, indent=2))
    save_run_figures(out, metrics, classes, y, logits, calibrator,
                     title=f"Confusion matrix: {Path(info['data']).name}")
    lines = [f"# skinfeat evaluation: {Path(info['run']).name} on {Path(info['data']).name}", ""]
    lines += weights_warning(info["random_weights"], info.get("identity")) + [
        headline_sentence(metrics, ci, classes), "",
        f"- task: {info['task']}; classes: {', '.join(classes)}"
        + (f"; decision threshold on p({classes[1]}) = {info['threshold']:.3f} (chosen on the "
           "model's validation split)" if info.get("threshold") is not None else ""),
        f"- model: `{info['run']}` ({model_kind(info)}, inputs {info['head'].get('inputs')}); "
        f"calibration applied: {info['calibration']}",
        f"- data: `{info['data']}` (layout {info['layout']}): {info['n']} images scored"
        + (f", {len(info['unreadable'])} unreadable (or without an embedding) and left out"
           if info["unreadable"] else "")
        + (f"; embeddings from {', '.join(f'`{c}`' for c in info['cache'])}"
           if info.get("cache") else ""),
        f"- {info['metadata_note']}",
        *([f"- image-only fallback: {info['fell_back']} of {info['n']} scored row(s) had "
           "every metadata field missing and were scored by it"]
          if info.get("fell_back") is not None else []),
        f"- backbone: {info['backbone']}; weights: {info['weights']}"]
    seen, group = info["seen_in_training"], info["group"]
    if info["overlap_with_training"].get("rows"):
        lines.append(f"- **overlap** (`--include-seen`): {info['overlap_with_training']['rows']} "
                     f"scored image(s) (or their {group}s) were used to train or early-stop the "
                     "model: scores are optimistic")
    elif seen["images"]:
        lines.append(f"- left out: {seen['images']} image(s) of {seen['groups']} {group}(s) "
                     "that the model trained or early-stopped on (`--include-seen` keeps them)")
    lines += ["", "## All metrics", "", f"95 % CIs: bootstrap over {group}s.", ""]
    keys = headline(len(classes))
    lines += metrics_table(metrics, ci, baseline, t, keys) + [""]
    if baseline:
        lines += [f"Majority baseline always predicts `{baseline['predicts']}` (the most "
                  "frequent training class).", ""]
    lines += ["## Per class", ""] + per_class_table(metrics) + [
        "", "## Calibration per class", ""] + calibration_table(metrics) + [
        "", "![confusion matrix](confusion.png) ![reliability](reliability.png)", "",
        "Every number, with the confusion matrix: `evaluate_metrics.json`."]
    if subgroups is not None:
        lines += [""] + subgroups.to_markdown("## Subgroups").splitlines()
    write_text(out / "evaluate_report.md", "\n".join(lines) + "\n")
