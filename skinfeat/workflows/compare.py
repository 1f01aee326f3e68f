"""compare as a function: several caches (encoders) and / or models on identical grouped folds.

Each cache is one entry per model (caches are not fused): ``cv_run`` runs once per cache, with
the same folds, seeds and recipe, into ``out/cv/LABEL/``. The statistics read the runs'
``oof_predictions.csv`` back (nothing is refitted): per entry the folds' mean +- sd of every
headline metric, and against the first entry the paired difference in ``metric`` with a
95 % interval from a bootstrap over groups (``evaluate.compare_stats``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_artifact, write_text
from ..data.datasets import Dataset
from ..deploy.inputs import cache_paths, dataset_or_path, recipe_or_default
from ..embed.embedding_cache import Caches, PathLike
from ..errors import InputError
from ..evaluate.compare_stats import P_VALUE_METHOD, check_metric, paired_difference, seed_mean
from ..evaluate.report import metric_label, new_figure
from ..learn.cv import CVConfig
from ..learn.runconfig import RunConfig
from ..learn.train import as_dataset
from .cv import cv_run
from .results import CompareResult, run_folder

log = logging.getLogger(__name__)


def cache_labels(caches: Sequence[str | Path]) -> list[str]:
    """A short, unique folder name per cache: its file stem, numbered by position when two
    stems match, and numbered again while that collides with another label (``x.h5``,
    ``d/x.h5``, ``2_x.h5``: 1_x, 2_2_x, 2_x), so no entry overwrites another's results."""
    stems = [Path(c).stem or "cache" for c in caches]
    labels: list[str] = []
    for i, s in enumerate(stems):
        label = s if stems.count(s) == 1 else f"{i + 1}_{s}"
        while label in labels or (label != s and label in stems):
            label = f"{i + 1}_{label}"
        labels.append(label)
    return labels


def check_caches(caches: Sequence[str | Path]) -> None:
    """One file given twice would be one encoder compared with itself under two names."""
    seen: dict[Path, str | Path] = {}
    for c in caches:
        key = Path(c).resolve()
        if key in seen:
            raise InputError(f"--cache {c}: the same file as --cache {seen[key]}; give each "
                             "cache once")
        seen[key] = c


def _read_oof(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "group": str})


def _same_folds(runs: dict[str, Path]) -> None:
    """Every cv run put every image in the same fold for every seed (or the pairing is off)."""
    first_label, first = None, None
    for label, where in runs.items():
        folds = pd.read_csv(where / "cv_folds.csv", dtype={"image_id": str})
        folds = folds.drop(columns=[c for c in ("group_id", "lesion_id", "dx") if c in folds]) \
            .sort_values("image_id").reset_index(drop=True)
        if first is None:
            first_label, first = label, folds
        elif not folds.equals(first):
            raise InputError(f"{where / 'cv_folds.csv'}: folds differ from {first_label}'s "
                             "(the caches must hold the same images)")


def _entries(runs: dict[str, Path], models: Sequence[str], inputs: Sequence[str]) -> list[dict]:
    several = len(inputs) > 1
    return [{"entry": f"{label}/{m}" + (f"/{i}" if several else ""), "cache": label,
             "model": m, "inputs": i, "run": where}
            for label, where in runs.items() for m in models for i in inputs]


def _arrays(oof: pd.DataFrame, entry: dict, classes: list[str], order: pd.Index,
            seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(proba (S, N, K), decision codes (S, N)) of one entry, rows in ``order`` (image ids)."""
    code = {c: k for k, c in enumerate(classes)}
    rows = oof[(oof["model"] == entry["model"]) & (oof["inputs"] == entry["inputs"])]
    probas, preds = [], []
    for s in seeds:
        part = rows[rows["seed"] == s].set_index("image_id").reindex(order)
        if part["decision"].isna().any():
            raise InputError(f"{entry['run'] / 'oof_predictions.csv'}: seed {s} lacks "
                             f"{int(part['decision'].isna().sum())} images")
        probas.append(part[[f"p_{c}" for c in classes]].to_numpy(np.float64))
        preds.append(part["decision"].map(code).to_numpy(np.int64))
    return np.stack(probas), np.stack(preds)


def compare_run(data: Dataset | pd.DataFrame, caches: Sequence[str | Path], out: str | Path,
                cfg: CVConfig, *, metric: str = "balanced_accuracy", n_boot: int = 2000,
                jobs: int = 1, progress: Callable[[int], None] | None = None,
                on_start: Callable[[int], None] | None = None) -> CompareResult:
    """CV of every cache x model on identical folds, then the table, the paired differences
    against the first entry, ``compare_report.md``, ``compare_leaderboard.csv``,
    ``compare_forest.png`` and ``compare.json`` in ``out``."""
    data = as_dataset(data)
    merged = data.table.attrs.get("merged_groups")   # --merge-duplicate-groups: the report says it
    caches = [str(c) for c in caches]
    if not caches:
        raise InputError("compare needs at least one cache")
    check_metric(metric, len(data.classes))
    check_caches(caches)
    if n_boot < 1:
        raise InputError(f"--n-boot {n_boot}: the paired intervals need at least 1 bootstrap "
                         "resample (2000 is the default)")
    if len(caches) * len(cfg.models) * len(cfg.inputs or ("image",)) < 2:
        raise InputError("compare needs two entries: give several caches or several models")
    out = Path(out)
    runs, results = {}, {}
    # Every cache runs the same folds x models x seeds: the first one's count, times the
    # caches, is the whole comparison's (the progress bar's total).
    first_start = (lambda n: on_start(n * len(caches))) if on_start else None
    for i, (label, cache) in enumerate(zip(cache_labels(caches), caches, strict=False)):
        log.info("compare: cv on %s", cache)
        runs[label] = out / "cv" / label
        results[label] = cv_run(data, [cache], runs[label], cfg, jobs=jobs, progress=progress,
                                on_start=first_start if i == 0 else None)
    _same_folds(runs)
    first = next(iter(results.values())).run
    classes, headline = first.classes, first.headline
    inputs, seeds = first.config["inputs"], first.config["seeds"]
    entries = _entries(runs, cfg.models, inputs)
    oofs = {label: _read_oof(where / "oof_predictions.csv") for label, where in runs.items()}
    scored = first.folds_table["image_id"].astype(str)
    order = pd.Index(sorted(scored))
    truth = data.table.assign(image_id=data.table["image_id"].astype(str)) \
        .drop_duplicates("image_id").set_index("image_id")
    y = truth.loc[order, "label"].to_numpy(np.int64)      # class codes, in ``classes`` order
    groups = truth.loc[order, "group_id"].astype(str).to_numpy()
    arrays = [_arrays(oofs[e["cache"]], e, classes, order, seeds) for e in entries]
    rows = []
    for e, arr in zip(entries, arrays, strict=False):
        summary = results[e["cache"]].run.summary[e["model"]][e["inputs"]]
        row = {k: e[k] for k in ("entry", "cache", "model", "inputs")}
        for k in headline:
            row[f"{k}_mean"], row[f"{k}_std"] = summary[k]["mean"], summary[k]["std"]
        diff = paired_difference(metric, y, groups, arrays[0], arr, n_boot=n_boot)
        row.update({f"oof_{metric}": diff_base(metric, y, arr), "diff": diff.estimate,
                    "diff_low": diff.low, "diff_high": diff.high, "p_value": diff.p_value,
                    "within_noise": diff.within_noise})
        rows.append(row)
    frame = pd.DataFrame(rows)
    res = {"metric": metric, "n_boot": n_boot, "p_value_method": P_VALUE_METHOD,
           "reference": entries[0]["entry"], "classes": classes, "headline": list(headline),
           "dataset": first.dataset, "task": first.task, "split": first.split,
           "protocol": first.protocol, "group": first.group, "folds": cfg.folds,
           "seeds": list(seeds), "images": int(len(order)),
           "groups": int(len(set(groups))), "merged_groups": merged,
           "random_weights": any(bool(r.info.get("random_weights")) for r in results.values()),
           "caches": dict(zip(runs, caches, strict=False)),
           "runs": {k: str(v) for k, v in runs.items()},
           "table": frame}
    write_compare(out, res)
    return CompareResult(frame, metric, res["reference"], res, out)


def diff_base(metric: str, y: np.ndarray, arr: tuple[np.ndarray, np.ndarray]) -> float:
    """The entry's own ``metric`` on its pooled out-of-fold predictions (mean over seeds)."""
    return float(seed_mean(metric, y, arr[0], arr[1], np.ones((1, len(y))))[0])


def write_compare(out: Path, res: dict) -> None:
    frame: pd.DataFrame = res["table"]
    board = frame.sort_values(f"{res['metric']}_mean", ascending=False, kind="mergesort")
    board = board.assign(rank=np.arange(1, len(board) + 1))
    write_artifact(out / "compare_leaderboard.csv", lambda tmp: board.to_csv(tmp, index=False))
    save_forest_png(frame, res, out / "compare_forest.png")
    write_text(out / "compare_report.md", "\n".join(report_lines(res)) + "\n")
    plain = {k: v for k, v in res.items() if k != "table"}
    plain["entries"] = json.loads(frame.to_json(orient="records"))
    write_text(out / "compare.json", json.dumps(plain, indent=2))


def verdict(row, reference: str) -> str:
    if row["entry"] == reference:
        return "reference"
    if not np.isfinite(row["diff_low"]):
        return "undefined"
    if row["within_noise"]:
        return "within noise (interval includes 0)"
    return "better" if row["diff"] > 0 else "worse"


def report_lines(res: dict) -> list[str]:
    frame, metric, ref = res["table"], res["metric"], res["reference"]
    name = metric_label(metric)[0]
    lines = ["# Compare", ""]
    if res["random_weights"]:
        lines += ["**RANDOM backbone weights in at least one cache: these numbers only show "
                  "the pipeline works.**", ""]
    lines += [f"{res['dataset']}, task {res['task']}; {res['images']} images in "
              f"{res['groups']} {res['group']}s; {res['split']} split, {res['folds']} folds x "
              f"{len(res['seeds'])} seed(s) {res['seeds']}, the same folds for every entry "
              f"({res['protocol']}).", ""]
    if res.get("merged_groups") is not None:
        lines += [f"Groups joined before splitting (skinfeat audit, --merge-duplicate-groups): "
                  f"{res['merged_groups']} group(s) merged into others by near-duplicate "
                  "pairs; every entry's folds use the joined groups.", ""]
    lines += ["## Every entry: mean ± sd over folds", ""]
    keys = res["headline"]
    lines += ["| entry | " + " | ".join(metric_label(k)[0] for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for _, r in frame.iterrows():
        lines.append(f"| {r['entry']} | " + " | ".join(
            "n/a" if pd.isna(r[f'{k}_mean']) else f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}"
            for k in keys) + " |")
    lines += ["", f"## Paired differences in {name} against {ref}", "",
              f"{name} on the pooled out-of-fold predictions (mean over seeds); difference = "
              f"entry - {ref}, 95 % percentile interval from {res['n_boot']} bootstrap "
              f"resamples of whole {res['group']}s (the same resample for both entries). "
              f"p: {res['p_value_method']}. An interval that includes 0 is within noise.", "",
              f"| entry | {name} | difference | 95 % interval | p | verdict |",
              "|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        if r["entry"] == ref:
            lines.append(f"| {r['entry']} | {r[f'oof_{metric}']:.4f} | | | | reference |")
            continue
        lines.append(f"| {r['entry']} | {r[f'oof_{metric}']:.4f} | {r['diff']:+.4f} | "
                     f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}] | {r['p_value']:.4f} | "
                     f"{verdict(r, ref)} |")
    lines += ["", "![forest plot](compare_forest.png)", "",
              "Leaderboard: `compare_leaderboard.csv`; each entry's cv run (report, folds, "
              "out-of-fold predictions): " + ", ".join(f"`cv/{k}/`" for k in res["runs"]) + "."]
    return lines


def save_forest_png(frame: pd.DataFrame, res: dict, path: Path) -> None:
    """Each entry's difference against the reference with its interval; a line at 0."""
    rows = frame[frame["entry"] != res["reference"]]
    fig, ax = new_figure((7, 1.8 + 0.45 * max(len(rows), 1)))
    ypos = np.arange(len(rows))[::-1]
    for yy, (_, r) in zip(ypos, rows.iterrows(), strict=False):
        color = "0.5" if r["within_noise"] else ("tab:green" if r["diff"] > 0 else "tab:red")
        ax.plot([r["diff_low"], r["diff_high"]], [yy, yy], color=color, lw=2)
        ax.plot([r["diff"]], [yy], "o", color=color)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(ypos)
    ax.set_yticklabels(list(rows["entry"]))
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    # A long entry name would run off a one-line label: the reference gets its own line.
    ax.set_title(f"{metric_label(res['metric'])[0]}: entry minus\n{res['reference']}", fontsize=9)
    ax.set_xlabel("difference (95 % interval over groups)", fontsize=9)
    fig.tight_layout()
    write_artifact(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def compare(data: Dataset | PathLike, caches: Caches, *,
            models: Sequence[str] = ("linear",), inputs: str = "image", folds: int = 5,
            metric: str = "balanced_accuracy", recipe: RunConfig | None = None,
            params: dict | None = None,
            seeds: Sequence[int] | None = None, split: str = "group", n_boot: int = 2000,
            jobs: int = 1, out: PathLike | None = None,
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> CompareResult:
    """Encoders (one cache each, not fused) and / or models on identical grouped folds
    (``skinfeat compare``): cv per cache, then the paired group-bootstrap difference of each
    entry against the first in ``metric`` (balanced_accuracy; auc or pauc80 when binary)."""
    cfg = CVConfig.of(recipe_or_default(recipe), folds, split, seeds, models, (inputs,), params)
    where, owner = run_folder(out, "compare")
    res = compare_run(dataset_or_path(data), cache_paths(caches, "caches"), where, cfg,
                      metric=metric, n_boot=n_boot, jobs=jobs, progress=progress, on_start=on_start)
    return replace(res, _owner=owner)
