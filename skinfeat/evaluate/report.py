"""Report writing: metrics.json, report.md, the model card (README.md) and PNG figures of a run."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_artifact, write_text
from .checklist import _spec_of, checklist_lines
from .hub_card import card_data, write_hub_card
from .metrics import bootstrap_ci, headline, reliability_bins, softmax
from .model_text import model_line, model_words, random_sources, stopping_text, weights_banner

# The published Keras model's numbers (image-level split, epoch chosen on the scored set).
REFERENCE = {"accuracy": 0.7324, "weighted_f1": 0.75, "macro_f1": 0.55}


def new_figure(figsize: tuple[float, float], *subplots, **kwargs):
    """A matplotlib ``Figure`` and its axes, made without pyplot: no backend is chosen and no
    global figure state is touched (a notebook's own matplotlib settings stay as they are)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*subplots, **kwargs)


# Average width of one character of a 10 pt label, in inches (a little over DejaVu Sans').
CHAR_IN = 0.085


def set_margins(fig, *, left: float, bottom: float, top: float = 0.45,
                right: float = 0.25) -> None:
    """Fixed margins in inches, sized by the caller from its labels' lengths. What
    ``tight_layout`` finds by measuring every label, which costs a second draw of the figure:
    half the time of a small PNG, and cv writes about twenty of them."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=min(left / width, 0.6), right=1 - right / width,
                        bottom=min(bottom / height, 0.6), top=1 - top / height)


def save_confusion_png(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                       title: str = "Confusion matrix") -> None:
    counts = np.asarray(cm)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = new_figure((6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row-normalised colour)")
    ax.set_title(title)
    longest = max((len(str(c)) for c in classes), default=1)
    # y: tick labels + axis label; x: tick labels at 45 degrees (0.71 of their length) + label
    set_margins(fig, left=0.45 + CHAR_IN * longest, bottom=0.55 + 0.71 * CHAR_IN * longest)
    write_artifact(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def save_reliability_png(y_true: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> None:
    fig, ax = new_figure((5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, proba in curves.items():
        b = reliability_bins(y_true, proba)
        ax.plot(b["confidence"], b["accuracy"], "o-", label=name)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.set_title("Reliability diagram")
    fig.tight_layout()
    write_artifact(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.2f} %" if pct else f"{x:.3f}"


def per_class_table(metrics: dict) -> list[str]:
    lines = ["| class | support | precision | recall | F1 | AUC |", "|---|---|---|---|---|---|"]
    for c, m in metrics["per_class"].items():
        lines.append(f"| {c} | {m['support']} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                     f"{fmt(m['f1'])} | {fmt(m['auc'])} |")
    return lines


def weights_warning(random_weights: bool, identity: dict | None = None) -> list[str]:
    """The RANDOM-weights banner; with a fused cache's ``identity``, it names the random
    sources instead of condemning the whole run (``model_text.weights_banner``)."""
    return weights_banner(random_weights, identity)


PERCENT_METRICS = ("accuracy", "balanced_accuracy")
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1",
          "weighted_f1": "weighted F1", "macro_auc": "macro AUC (OvR)", "auc": "ROC AUC",
          "pauc80": "pAUC above 80 % TPR (0-0.2)"}


def metric_label(key: str) -> tuple[str, bool]:
    """(readable name, shown in percent) of a metric key."""
    if key.startswith("sensitivity_at_"):
        return f"sensitivity at {key.split('_')[2]} % specificity", True
    return LABELS.get(key, key), key in PERCENT_METRICS


def save_run_figures(out: Path, metrics: dict, classes: Sequence[str], y_true: np.ndarray,
                     logits: np.ndarray, calibrator, title: str = "Confusion matrix") -> None:
    """``confusion.png`` and ``reliability.png`` (before and after calibration)."""
    save_confusion_png(metrics["confusion_matrix"], classes, out / "confusion.png", title=title)
    save_reliability_png(y_true, {"before calibration": softmax(logits),
                                  f"after ({calibrator.method})": calibrator(logits)},
                         out / "reliability.png")


def calibration_table(metrics: dict) -> list[str]:
    """Per class: prevalence, mean predicted probability and one-vs-rest ECE, before and after
    calibration (balanced class weights shift the predicted priors; calibration undoes it)."""
    after, before = metrics["classwise_calibration"], metrics["classwise_calibration_uncalibrated"]
    lines = ["| class | prevalence | mean p before | mean p after | ECE before | ECE after |",
             "|---|---|---|---|---|---|"]
    for c, a in after["per_class"].items():
        b = before["per_class"][c]
        lines.append(f"| {c} | {fmt(a['prevalence'])} | {fmt(b['mean_proba'])} | "
                     f"{fmt(a['mean_proba'])} | {fmt(b['ece'])} | {fmt(a['ece'])} |")
    return lines + [f"| **mean** | | | | {fmt(before['classwise_ece'])} | "
                    f"{fmt(after['classwise_ece'])} |", "",
                    f"Largest ratio of mean predicted probability to prevalence: before "
                    f"{before['max_prior_ratio']:.2f}x, after {after['max_prior_ratio']:.2f}x."]


def metrics_table(metrics: dict, ci: dict, baseline: dict | None, temperature: float,
                  keys: Sequence[str]) -> list[str]:
    """Markdown rows: each metric with its bootstrap CI and the majority baseline, then ECE."""
    lines = ["| metric | model | 95 % CI | majority baseline |", "|---|---|---|---|"]
    for key in keys:
        label, pct = metric_label(key)
        c = ci.get(key)
        lines.append(f"| {label} | {fmt(metrics[key], pct)} | "
                     + (f"{fmt(c[0], pct)} to {fmt(c[1], pct)}" if c else "") + " | "
                     + (fmt(baseline[key], pct) if baseline else "") + " |")
    return lines + [f"| ECE, calibrated (T={temperature:.2f}) | {fmt(metrics['ece'])} | | |",
                    f"| ECE before calibration | {fmt(metrics['ece_uncalibrated'])} | | |"]


def source_lines(info) -> list[str]:
    """The embedding source(s) of a run: one backbone, or each fused cache in order."""
    sources = info.sources
    if len(sources) > 1:
        return [f"- embeddings: {len(sources)} caches fused per image (concatenated in this "
                f"order, {info.embed_dim}-d): " + "; ".join(
                    f"`{s['cache']}` ({s['backbone']}, {s['dim']}-d)" for s in sources),
                f"- weights: {info.weights}"]
    return [f"- backbone: {info.identity.get('backbone', 'unknown')}; weights: "
            f"{info.weights}"]


def sources_split_lines(sides: dict | None) -> list[str]:
    """A ``by:`` split's sources in words: which values trained and which scored."""
    if not sides:
        return []
    return [f"- sources ({sides['column']}): trained on {', '.join(sides['trained_on'])}; "
            f"scored on {', '.join(sides['scored_on'])}"]


def write_run_report(out: Path, metrics: dict, baseline: dict, info, *, y_true: np.ndarray,
                     logits: np.ndarray, calibrator, y_pred: np.ndarray,
                     groups: np.ndarray, subgroups=None) -> None:
    """metrics.json, report.md, the model card (README.md) and the figures of a fit-head run;
    ``info`` is its ``RunSummary`` (workflows.summary; read by attribute, written by ``to_dict``);
    ``subgroups``: the scored part's ``SubgroupResult`` (None: no subgroup tables)."""
    classes = info.classes
    temperature = calibrator.temperature
    # Resampling groups (lesions, patients), not images: images of one group are not
    # independent, and an image bootstrap is about a quarter too narrow on a grouped split.
    ci = bootstrap_ci(y_true, calibrator(logits), classes, groups=groups, y_pred=y_pred)
    payload = {"model": metrics, "majority_baseline": baseline, "bootstrap_ci95": ci,
               "info": info.to_dict()}
    if subgroups is not None:
        payload["subgroups"] = subgroups.to_dict()
    write_text(out / "metrics.json", json.dumps(payload, indent=2))
    save_run_figures(out, metrics, classes, y_true, logits, calibrator)
    lines = [f"# skinfeat run: {out.name}", ""] + weights_warning(
        info.random_weights, info.identity) + [
        model_line(info),
        f"- data: {info.dataset}, task {info.task}; classes: "
        + ", ".join(f"`{c}` ({info.class_names.get(c, c)})" for c in classes),
        f"- split: **{info.split}** ("
        + (f"{info.group}s" if info.group != "image" else "no groups: each image alone")
        + f"): {info.protocol}; seed {info.seed}",
        *sources_split_lines(info.sources_split),
        f"- {stopping_text(info)}"
        + (" (the reference's protocol: the scored set also chose the epoch; optimistic)"
           if info.select_on == "test" else " (never the scored set)"),
        f"- sizes (images / {info.group}s): " + ", ".join(
            f"{s} {info.sizes[s]} / {info.lesions[s]}" for s in info.sizes)
        + (f"; {info.without_embedding} image(s) of the table had no embedding and were "
           "left out" if info.without_embedding else ""),
        *source_lines(info),
        f"- metadata: {info.encoding}; {len(info.meta_features)} features, encoder "
        "fitted on train only",
        f"- calibration (fitted on {info.select_on}): {info.calibration}",
        f"- test-time augmentation: {info.tta_models}",
        f"- image-only fallback (rows with every metadata field missing): {info.fallback}",
    ]
    if info.threshold is not None:
        lines.append(f"- decision threshold on p({classes[1]}) = {info.threshold:.3f}, chosen "
                     f"on {info.select_on} (maximal balanced accuracy)")
    scored_on = info.scored_on
    lines += ["", "## Test metrics" if scored_on == "test" else
              f"## Metrics on {scored_on} (optimistic: this part also chose the epoch and the "
              "calibration; `--split none` has no test part, the honest scores of this recipe "
              "come from `skinfeat cv`)", "",
              f"95 % CIs: bootstrap over {info.group}s (1,000 resamples).", ""]
    lines += metrics_table(metrics, ci, baseline, temperature, headline(len(classes)))
    lines += ["", f"Majority baseline always predicts `{baseline['predicts']}`.", "",
              "## Per class", ""] + per_class_table(metrics) + [
              "", f"## Calibration per class ({scored_on})", ""] + calibration_table(metrics) + [
              "", "![confusion matrix](confusion.png) ![reliability](reliability.png)"]
    if info.reference_recipe:
        lines += [
            "", "## Reference recipe (published)", "",
            f"accuracy {fmt(REFERENCE['accuracy'], True)}, weighted F1 "
            f"{REFERENCE['weighted_f1']}, macro F1 {REFERENCE['macro_f1']}, on an image-level "
            "split whose test set also chose the epoch and fitted the age scaler: not comparable "
            "to a lesion-grouped run."]
    if subgroups is not None:
        lines += [""] + subgroups.to_markdown(f"## Subgroups ({scored_on})").splitlines()
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_model_card(out, metrics, ci, info, summary=payload)


class _Attrs(dict):
    """A summary dict read by attribute, a key it lacks reading as None (older metrics.json)."""
    def __getattr__(self, key: str):
        return self.get(key)


# What each public set's provenance means for a model trained on it (the model card's limits).
DATASET_LIMITS = {
    "ham10000": ["- HAM10000 comes from two clinics (Vienna, Queensland): mostly light-skinned "
                 "European-descent patients; performance on darker skin types is unknown.",
                 "- Dermoscopic images only; clinical (macroscopic) photographs are out of scope."],
    "pad-ufes-20": ["- PAD-UFES-20 holds smartphone (clinical) photographs from one Brazilian "
                    "programme; dermoscopic images are out of scope."],
}


def audit_lines(out: Path) -> list[str]:
    """The model card's line for a run whose split joined groups flagged by ``skinfeat audit``
    (``--merge-duplicate-groups``: splits.csv then has a merged_groups column)."""
    split = out / "splits.csv"
    if not split.is_file():
        return []
    merged = pd.read_csv(split, nrows=1)
    if "merged_groups" not in merged.columns:
        return []
    return [f"- Data audited (skinfeat audit): {int(merged['merged_groups'].iloc[0])} group(s) "
            "joined by near-duplicate pairs before splitting, so that no picture sits on both "
            "sides of a split."]


def write_model_card(out: Path, metrics: dict, ci: dict, info, *,
                     summary: dict | None = None, spec=None, evaluations: Sequence[dict] = ()
                     ) -> None:
    """The model card (README.md with the Hub's metadata, ``hub_card``) from a run's summary
    (``info``: the typed ``RunSummary``, or its dict as metrics.json holds it). ``summary``
    (metrics.json content, e.g. with ``subgroups``), ``spec`` and ``evaluations`` feed its CLEAR
    Derm checklist (``checklist.rewrite_card``)."""
    info_dict = info if isinstance(info, dict) else info.to_dict()
    info = _Attrs(info_dict)
    backbones = " + ".join(str(s["backbone"]) for s in info.sources or []) \
        or (info.identity or {}).get("backbone", "unknown")
    lines = [f"# Model card: {out.name}", "",
             "## Intended use",
             "Research and teaching only. **Not a medical device**; not for diagnosis or triage "
             "of patients.", "",
             "## Model",
             f"Frozen {backbones} image embeddings "
             f"({info.weights}) fused with the metadata fields "
             f"{', '.join(info.fields) or '(none)'} by a {model_words(info)}; "
             f"{len(info.classes)} classes: {', '.join(info.classes)}.", "",
             "## Data and protocol",
             f"Trained on {info.sizes['train']} images of {info.dataset} (task "
             f"{info.task}), {stopping_text(info)}, scored on "
             f"{info.sizes.get('test', info.sizes['val'])} "
             f"{'held-out' if 'test' in info.sizes else 'validation (optimistic)'} images; "
             f"split: {info.protocol}.", "",
             f"## Metrics ({info.scored_on}, 95 % bootstrap CI)"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lines.append(f"- {key}: {fmt(metrics[key])} ({fmt(ci[key][0])} to {fmt(ci[key][1])})")
    lines += ["", "## Known limits"] + DATASET_LIMITS.get(info.dataset, [
              f"- Trained on one data set ({info.dataset}): performance on other populations, "
              "cameras and clinics is unknown."]) + [
              "- Rare classes have few groups: their per-class numbers are noisy.",
              f"- Probabilities are calibrated on the validation split ({info.calibration}); "
              "calibration can drift on other populations, whose class prevalence differs."]
    some = random_sources(info.identity)
    if some:
        lines.append(f"- **Random backbone weights in the fused source(s) {', '.join(some)}**: "
                     "those embeddings carry no image knowledge.")
    elif info.random_weights:
        lines.append("- **The backbone had random weights**: this model has no clinical meaning.")
    lines += audit_lines(out)
    lines += [""] + checklist_lines(summary or {"model": metrics, "bootstrap_ci95": ci,
                                                "info": info_dict}, spec, evaluations)
    spec = _spec_of(info_dict, spec)
    write_hub_card(out, "\n".join(lines) + "\n", card_data(
        out.name, info_dict, metrics, ci, spec.citation if spec else ""))
