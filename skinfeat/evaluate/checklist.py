"""The model card's "Reporting checklist (CLEAR Derm)" section (Daneshjou et al., JAMA Dermatology
2021), filled from what a run knows and honest about what it does not.

Every item skinfeat can answer from the run's summary (metrics.json) and the dataset spec is
filled; the items only the author can answer are listed as open questions, never guessed.
``skinfeat.evaluate.card.rewrite_card`` rebuilds a run's model card (README.md) after the fact.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..data.presets import PRESETS
from ..data.spec import DatasetSpec
from .model_text import model_words, random_note, stopping_text

HEADING = "## Reporting checklist (CLEAR Derm)"

# Facts of the public releases (their papers), not of any one run.
IMAGE_TYPE = {"ham10000": "dermoscopic", "isic2019": "dermoscopic", "isic2020": "dermoscopic",
              "isic2018-test": "dermoscopic",
              "pad-ufes-20": "clinical (smartphone photographs)"}
LABEL_SOURCE = {
    "ham10000": "histopathology, follow-up, expert consensus or confocal microscopy, recorded "
                "per image in `dx_type`",
    "isic2018-test": "the ISIC 2018 Task 3 ground truth (HAM10000's confirmation methods)",
    "pad-ufes-20": "biopsy for every skin cancer and part of the rest, recorded per image in "
                   "`biopsed`; otherwise clinical diagnosis",
    "isic2020": "histopathology for every melanoma; benign labels also from expert agreement "
                "or longitudinal follow-up",
}
OPEN_QUESTIONS = (
    "Intended use: which clinical setting, user (dermatologist, GP, patient) and decision the "
    "model is meant to support.",
    "Target population: age, sex, skin types (Fitzpatrick) and ethnicity of the patients the "
    "model is meant for, and how they compare with the training data.",
    "Image acquisition: devices, magnification, lighting and the quality criteria used to "
    "include or exclude images.",
    "Ethics: approval, consent and data-use agreements for every data set used.",
    "Comparison with clinicians or a reader study, and the clinical utility of the outputs.",
    "Failure analysis: review of misclassified cases by a dermatologist.",
    "Code, weights and data availability for replication.",
)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _spec_of(info: dict, spec: DatasetSpec | None) -> DatasetSpec | None:
    return spec or PRESETS.get(str(info.get("dataset", "")))


def _metrics_line(model: dict, ci: dict, keys: Sequence[str]) -> str:
    parts = []
    for key in keys:
        if model.get(key) is None:
            continue
        pct = key in ("accuracy", "balanced_accuracy")
        c = ci.get(key)
        fmt = _pct if pct else _num
        parts.append(f"{key.replace('_', ' ')} {fmt(model[key])}"
                     + (f" (95 % CI {fmt(c[0])} to {fmt(c[1])})" if c else ""))
    return "; ".join(parts) or "not recorded"


def _subgroups_line(sub: dict | None) -> str:
    if not sub or not sub.get("fields"):
        return "not computed for this run (no `subgroups` in its metrics.json)"
    pct = sub.get("metric") == "balanced_accuracy"
    fmt = _pct if pct else _num
    out = []
    for t in sub["fields"]:
        if t.get("gap") is None:
            out.append(f"{t['field']}: not ranked (too few {sub.get('group_name', 'group')}s)")
            continue
        c = t.get("gap_ci95")
        out.append(f"{t['field']}: gap {fmt(t['gap'])} `{t['best']}` - `{t['worst']}`"
                   + (f" (95 % CI {fmt(c[0])} to {fmt(c[1])})" if c else ""))
    return f"{sub.get('metric', '').replace('_', ' ')} per subgroup; " + "; ".join(out)


def _external_line(evaluations: Sequence[dict]) -> str:
    if not evaluations:
        return "none: no external set was scored with this model (`skinfeat evaluate`)"
    out = []
    for e in evaluations:
        info, model, ci = e.get("info", {}), e.get("model", {}), e.get("bootstrap_ci95", {})
        name = info.get("dataset") or info.get("layout") or e.get("name", "external set")
        key = "auc" if model.get("auc") is not None else "balanced_accuracy"
        out.append(f"{name} ({model.get('n', '?')} images): " + _metrics_line(model, ci, [key]))
    return "; ".join(out)


def checklist_lines(summary: dict, spec: DatasetSpec | None = None,
                    evaluations: Sequence[dict] = ()) -> list[str]:
    """The checklist section's markdown lines from a run's metrics.json content (``model``,
    ``bootstrap_ci95``, ``info``, optional ``subgroups``) and its external evaluations."""
    info, model = summary.get("info", {}), summary.get("model", {})
    ci = summary.get("bootstrap_ci95", {})
    spec = _spec_of(info, spec)
    name = info.get("dataset") or (spec.name if spec else "unknown")
    open_items = list(OPEN_QUESTIONS)
    rows: list[tuple[str, str]] = []

    image_type = IMAGE_TYPE.get(name)
    if image_type is None:
        open_items.insert(0, f"Image type of {name}: dermoscopic, clinical or mixed?")
    sources = info.get("sources") or []
    backbone = " + ".join(str(s.get("backbone")) for s in sources) or \
        info.get("identity", {}).get("backbone", "unknown")
    rows.append(("Image type and source", f"{image_type or 'not known to skinfeat'}; images of "
                 f"{name}; image embeddings: {backbone} "
                 f"({info.get('weights', 'weights unknown')})"))
    citation = spec.citation if spec and spec.citation else ""
    if not citation:
        open_items.insert(0, f"Data set provenance and licence of {name}.")
    rows.append(("Data set and licence", citation or f"{name}: not recorded"))
    sizes, groups = info.get("sizes", {}), info.get("lesions", {})
    group = info.get("group", "group")
    counts = ", ".join(f"{part} {n} images / {groups.get(part, '?')} {group}s"
                       for part, n in sizes.items()) or "not recorded"
    if info.get("without_embedding"):
        counts += f"; {info['without_embedding']} image(s) left out (no embedding)"
    if info.get("classes"):
        counts += f"; {len(info['classes'])} classes: {', '.join(info['classes'])}"
    rows.append(("Inclusion counts", counts))
    label = LABEL_SOURCE.get(name)
    if label is None:
        open_items.insert(0, f"How the labels of {name} were established (histopathology, "
                          "consensus, follow-up) and by whom.")
    rows.append(("Label source", label or "not known to skinfeat"))
    rows.append(("Split protocol and grouping",
                 f"{info.get('split', '?')}: {info.get('protocol', 'not recorded')}; seed "
                 f"{info.get('seed', '?')}; {stopping_text(info)}"
                 + (f"; trained on {', '.join(info['sources_split']['trained_on'])}, scored on "
                    f"{', '.join(info['sources_split']['scored_on'])}"
                    if info.get("sources_split") else "")))
    fields = info.get("fields") or []
    rows.append(("Model and encoder",
                 f"{model_words(info)} on frozen image embeddings ({backbone})"
                 f"{random_note(info)}; metadata fields: "
                 f"{', '.join(fields) or 'none'}"))
    cal = model.get("classwise_calibration", {})
    raw = model.get("classwise_calibration_uncalibrated", {})
    rows.append(("Calibration", f"{info.get('calibration', 'not recorded')}, fitted on "
                 f"{info.get('select_on', '?')}; class-wise ECE {_num(raw.get('classwise_ece'))}"
                 f" before, {_num(cal.get('classwise_ece'))} after; top-label ECE "
                 f"{_num(model.get('ece'))}"))
    keys = ("auc", "balanced_accuracy", "macro_f1") if model.get("auc") is not None else \
        ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc")
    rows.append((f"Metrics with intervals ({info.get('scored_on', 'test')})",
                 _metrics_line(model, ci, keys) + f"; {group} bootstrap"))
    rows.append(("Subgroup results", _subgroups_line(summary.get("subgroups"))))
    rows.append(("External test", _external_line(evaluations)))
    fallback = info.get("fallback")   # absent in runs made before the fallback
    rows.append(("Missing metadata", info.get("encoding", "not recorded")
                 + (f"; rows with every field missing: {fallback}"
                    if fallback and fallback != "none" else "")))
    lines = [HEADING, "",
             "Filled from this run; items only the author can answer are listed below as open "
             "questions.", "", "| item | this run |", "|---|---|"]
    lines += [f"| {item} | {str(text).replace('|', '/')} |" for item, text in rows]
    lines += ["", "### Open questions (for the author)", ""] + [f"- [ ] {q}" for q in open_items]
    return lines
