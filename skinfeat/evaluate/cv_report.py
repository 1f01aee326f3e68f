"""The cross-validation report: cv_metrics.json, cv_report.md, cv_folds.csv, confusion PNGs."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import write_artifact, write_text
from .report import REFERENCE, fmt, metric_label, save_confusion_png, weights_warning

REFERENCE_PROTOCOL = ("image-level 80/20 split (images of one lesion on both sides); the scored "
                      "set also chose the epoch and the age scaler saw it; one split, no folds")


def pm(stat: dict, pct: bool = False) -> str:
    """'mean ± std' of a {"mean", "std"} dict, in percent or to three decimals."""
    mean, std = stat["mean"], stat["std"]
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f} %" if pct else f"{mean:.3f} ± {std:.3f}"


def confusion_png_name(model: str, inputs: str) -> str:
    return f"confusion_{model}_{inputs}.png"


def _rows(res: dict):
    for model, by_inputs in res["summary"].items():
        for inputs, entry in by_inputs.items():
            yield model, inputs, entry


def _table(res: dict, pick, header: list[str]) -> list[str]:
    lines = ["| model | inputs | " + " | ".join(header) + " |",
             "|---|---|" + "---|" * len(header)]
    for model, inputs, entry in _rows(res):
        lines.append(f"| {model} | {inputs} | " + " | ".join(pick(entry)) + " |")
    return lines


def metric_columns(res: dict) -> list[tuple[str, str, bool]]:
    """(key, label, in percent) of the task's headline metrics."""
    return [(k, *metric_label(k)) for k in res["headline"]]


def _protocol_lines(res: dict) -> list[str]:
    cfg, info = res["config"], res["info"]
    rc = cfg["recipe"]   # the one recipe of every fit (CVConfig.to_dict)
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    return [
        f"- data: {res['dataset']}, task {res['task']} ({len(res['classes'])} classes: "
        f"{', '.join(res['classes'])}); groups: {res['group']}s",
        f"- protocol: **{res['split']}**: {res['protocol']}",
    ] + ([f"- sources ({res['sources_split']['column']}), each fold trained on the others: "
          + "; ".join(f"fold {k} scored {', '.join(v)}"
                      for k, v in res["sources_split"]["scored_on"].items())]
         if res.get("sources_split") else []) + [
        f"- {cfg['folds']} folds, seed(s) {seeds}: every model and input set is trained and "
        "scored on identical folds",
        "- inside each fold: the metadata encoder is fitted on the training rows only; early "
        "stopping (head epoch, LightGBM round) uses an inner validation part "
        f"({100 * cfg['val_fraction']:.1f} % of the training folds, split the same way), "
        "**never the scored fold**",
        f"- data: {res['images']} images, {res['lesions']} {res['group']}s; {res['embed_dim']}-d "
        f"embeddings from " + (" + ".join(f"`{s['cache']}` ({s['backbone']}, {s['dim']}-d)"
                                         for s in info["sources"])
                               + " (fused per image, in this order)"
                               if len(info.get("sources") or []) > 1 else
                               info['identity'].get('backbone', 'an external model'))
        + f"; weights: {info['weights']}",
    ] + [f"- {model}: {line}" for model, line in res.get("model_notes", {}).items()] + [
        f"- cached views: {res['views']} (test-time averaging "
        f"{'on' if res['views'] and rc['tta'] else 'off'})",
        f"- metadata encoding: {rc['encoding']}; calibration: {rc['calibration']}, fitted on "
        "the inner validation part; decisions by the balanced rule (binary: the threshold "
        "chosen there)",
    ] + ([f"- {', '.join(res['batched_models'])}: the folds of each input set trained as one "
          "batched network (each equal to its own fit up to float rounding)"
          if cfg.get("batched") else f"- {', '.join(res['batched_models'])}: trained fold by "
          "fold"] if res.get("batched_models") else []) + (
        ["- saved models (`--save-models`): " + ", ".join(
            f"`{where}`" for where in res["models"].values())
         + " (fold ensembles: mean of the members' calibrated probabilities)"]
        if res.get("models") else []) + [f"- note: {note}" for note in res.get("notes", [])]


def _split_note(split: str) -> str:
    """What this run's folds were, beside the reference's image-level split."""
    if split in ("group", "lesion"):
        return ("This run used lesion-grouped folds, so its numbers are not comparable to the "
                "published ones; rerun with `--split image` to see how much the image-level "
                "protocol alone inflates the scores.")
    if split.startswith("by:"):
        return (f"This run held out one value of `{split[3:]}` per fold (each fold a source the "
                "model never saw), so it measures transfer to a new source; its numbers are not "
                "comparable to the published ones.")
    return ("This run reproduces the reference's image-level split (leaky) for comparison; "
            "it still stops early on an inner validation part, not on the scored fold.")


def _reference_lines(res: dict) -> list[str]:
    lines = ["## The reference's published numbers, beside ours", "",
             "| | accuracy | weighted F1 | macro F1 | protocol |", "|---|---|---|---|---|",
             f"| reference (published) | {100 * REFERENCE['accuracy']:.2f} % | "
             f"{REFERENCE['weighted_f1']:.2f} | {REFERENCE['macro_f1']:.2f} | "
             f"{REFERENCE_PROTOCOL} |"]
    ours = (f"{res['split']}-level {res['config']['folds']}-fold CV; epoch chosen on an inner "
            "validation part, never the scored fold; encoder fitted per fold")
    for model, inputs, entry in _rows(res):
        if inputs == "fused":
            lines.append(f"| skinfeat {model} (fused) | {pm(entry['accuracy'], True)} | "
                         f"{pm(entry['weighted_f1'])} | {pm(entry['macro_f1'])} | {ours} |")
    lines += ["", "The reference's protocol is optimistic by construction: with images of one "
              "lesion on both sides of the split, a model can recognise the lesion instead of "
              "the disease, and choosing the epoch on the scored set adds selection bias. "
              + _split_note(str(res["split"])),
              "Accuracy rewards predicting `nv` (66.95 % of HAM10000): read balanced accuracy "
              "and macro F1 first."]
    return lines


def _per_fold_lines(res: dict) -> list[str]:
    columns = metric_columns(res)
    lines = ["## Per fold", "", "| model | inputs | seed | fold | best epoch / round | "
             + " | ".join(name for _, name, _ in columns) + " |", "|---|---|---|---|---|"
             + "---|" * len(columns)]
    order = {(m, i): n for n, (m, i, _) in enumerate(_rows(res))}
    for r in sorted(res["records"], key=lambda r: (order[r["model"], r["inputs"]], r["seed"],
                                                   r["fold"])):
        lines.append(f"| {r['model']} | {r['inputs']} | {r['seed']} | {r['fold']} | "
                     f"{r['best_epoch']} | "
                     + " | ".join(fmt(r["metrics"][k], pct) for k, _, pct in columns) + " |")
    return lines


def _fallback_lines(res: dict) -> list[str]:
    """How many scored rows each model x input set's image-only fallback scored."""
    counts: dict = {}
    for r in res["records"]:
        if r.get("fell_back"):
            key = (r["model"], r["inputs"], bool(r.get("reused_fallback")))
            counts[key] = counts.get(key, 0) + r["fell_back"]
    return ["", *(f"Image-only fallback ({m}, {i}): {n} scored row(s) had every metadata field "
                  "missing and were scored by "
                  + ("the same fold's image-only model" if reused else "its fallback")
                  for (m, i, reused), n in counts.items())] if counts else []


def _subgroup_lines(subgroups: dict, n_seeds: int) -> list[str]:
    """Each model x input set's out-of-fold subgroup tables, its forest plots in
    ``subgroups_MODEL_INPUTS/``."""
    lines = []
    for model, by_inputs in subgroups.items():
        for inputs, result in by_inputs.items():
            where = f"subgroups_{model}_{inputs}/"
            text = result.to_markdown(f"## Subgroups (out-of-fold): {model}, {inputs}")
            lines += [""] + text.replace("](subgroups_", f"]({where}subgroups_").splitlines()
            if n_seeds > 1:
                lines += ["", "(the first seed's out-of-fold predictions)"]
    return lines


def write_cv_report(out: Path, res: dict) -> None:
    """Write everything about one CV run into ``out``."""
    folds = res["folds_table"]
    merged = folds.attrs.get("merged_groups")   # joined by an audit (--merge-duplicate-groups)
    if merged is not None:
        folds = folds.assign(merged_groups=merged)
    write_artifact(out / "cv_folds.csv", lambda tmp: folds.to_csv(tmp, index=False))
    payload = {k: v for k, v in res.items() if k not in ("folds_table", "oof", "subgroups")}
    subgroups = res.get("subgroups") or {}
    payload["subgroups"] = {m: {i: r.to_dict() for i, r in by.items()}
                            for m, by in subgroups.items()}
    if res["reference_recipe"]:
        payload["reference"] = REFERENCE
    write_text(out / "cv_metrics.json", json.dumps(payload, indent=2, default=float))
    for model, inputs, entry in _rows(res):
        save_confusion_png(entry["confusion_matrix"], res["classes"],
                           out / confusion_png_name(model, inputs),
                           title=f"{model}, {inputs}: summed over folds")
    n_seeds = len(res["config"]["seeds"])
    columns = metric_columns(res)
    lines = [f"# skinfeat cross-validation: {out.name}", ""] + \
        weights_warning(res["info"]["random_weights"], res["info"].get("identity"))
    if merged is not None:
        lines += [f"Groups joined before splitting (skinfeat audit, --merge-duplicate-groups): "
                  f"{merged} group(s) merged into others by near-duplicate pairs.", ""]
    dropped = folds.attrs.get("dropped_label_issues")
    if dropped is not None:
        lines += [f"Left out before cv (skinfeat audit label issues, --drop-label-issues): "
                  f"{len(dropped)} image(s): {', '.join(dropped)}.", ""]
    lines += _protocol_lines(res) + [
        "", f"## Mean ± std over {res['config']['folds']} folds"
        + (f" x {n_seeds} seeds" if n_seeds > 1 else ""), ""]
    lines += _table(res, lambda e: [pm(e[k], pct) for k, _, pct in columns],
                    [name for _, name, _ in columns])
    base = res["majority_baseline"]
    lines.append("| majority class | - | " + " | ".join(pm(base[k], pct) for k, _, pct in columns)
                 + " |")
    if n_seeds > 1:
        lines += ["", "## Spread across seeds (mean ± std of the per-seed means)", ""]
        lines += _table(res, lambda e: [pm(e["seed_spread"][k], pct) for k, _, pct in columns],
                        [name for _, name, _ in columns])
    for stat in ("recall", "f1"):
        lines += ["", f"## Per-class {'recall' if stat == 'recall' else 'F1'} (mean ± std)", ""]
        lines += _table(res, lambda e, stat=stat: [pm(e["per_class"][c][stat])
                                                   for c in res["classes"]],
                        list(res["classes"]))
    lines += ["", "## Confusion matrices (summed over folds" + (" and seeds)" if n_seeds > 1
                                                                  else ")"), ""]
    lines += [f"![{model} {inputs}]({confusion_png_name(model, inputs)})"
              for model, inputs, _ in _rows(res)]
    if res["reference_recipe"]:
        lines += [""] + _reference_lines(res)
    lines += _subgroup_lines(subgroups, len(res["config"]["seeds"]))
    lines += [""] + _per_fold_lines(res) + _fallback_lines(res)
    write_text(out / "cv_report.md", "\n".join(lines) + "\n")
