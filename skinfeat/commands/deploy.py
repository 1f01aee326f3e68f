"""From a trained run to a diagnosis: predict and evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..embed.device import DEVICES
from .common import column_overrides, dataset_options, pop_dataset_options, progress_bar


def cache_option(f):
    return click.option("--cache", "caches", multiple=True,
                        type=click.Path(exists=True, dir_okay=False),
                        help="Take the embeddings of the rows from this HDF5 cache (by image id) "
                        "instead of embedding image files; repeat for a model on fused caches, "
                        "in training order. Needed for a model trained on embeddings made "
                        "outside skinfeat.")(f)


def predictor_options(f):
    for opt in reversed([
        click.option("--model", "run", required=True, type=click.Path(exists=True, file_okay=False),
                     help="A run folder written by fit-head (config.json + weights)."),
        click.option("--weights-file", type=click.Path(exists=True),
                     help="Where the backbone is on this machine: the model folder (a "
                     "local-dir: encoder that has moved) or the checkpoint the model was "
                     "trained with; its sha256 must match."),
        click.option("--device", type=click.Choice(DEVICES), default="auto",
                     show_default=True),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--workers", type=int, default=0, show_default=True,
                     help="DataLoader decode workers."),
    ]):
        f = opt(f)
    return f


@click.command()
@predictor_options
@cache_option
@click.option("--image", type=click.Path(dir_okay=False), help="One image file (with --cache: "
              "its id is the file name's stem; the file need not exist).")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="Batch: a column image (path) or image_id, plus any of the model's metadata "
              "fields as columns.")
@click.option("--meta", multiple=True, metavar="FIELD=VALUE",
              help="A metadata value for --image, repeatable (e.g. --meta age=55 --meta "
              "anatom_site_general=head/neck); a field not given is missing.")
@click.option("--age", type=float, help="HAM10000 models: same as --meta age=AGE.")
@click.option("--sex", help="HAM10000 models: same as --meta sex=SEX.")
@click.option("--localization", help="HAM10000 models: same as --meta localization=SITE.")
@click.option("--output", default="predictions.csv", show_default=True,
              type=click.Path(dir_okay=False), help="Where --csv predictions are written.")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print probabilities as JSON.")
def predict(run, weights_file, device, batch_size, workers, caches, image, csv_path, meta, age,
            sex, localization, output, top_k, as_json) -> None:
    """Calibrated class probabilities for a raw image (or a CSV of them) and its metadata."""
    from ..api import load_model

    if bool(image) == bool(csv_path):
        raise click.UsageError("pass exactly one of --image or --csv")
    if image and not caches and not Path(image).is_file():
        raise click.BadParameter(f"{image}: no such file", param_hint="--image")
    aliases = [f"{k}={v}" for k, v in (("age", age), ("sex", sex), ("localization", localization))
               if v is not None and v != ""]
    if csv_path and (meta or aliases):
        raise click.UsageError("--meta/--age/--sex/--localization go with --image; a CSV has "
                               "columns")
    model = load_model(run, weights_file=weights_file, device=device, batch_size=batch_size,
                       num_workers=workers)
    if model.random_weights:
        click.echo(f"NOTE: {model.random_note()}", err=True)
    if image:
        r = model.predict_image(image, [*aliases, *meta], embeddings=list(caches) or None)
        if as_json:
            click.echo(json.dumps({"image": image, **r.decision.to_dict(),
                                   "prediction": r.prediction,   # older name of "decision"
                                   "probabilities": r.probabilities, "metadata": r.metadata,
                                   "missing_metadata": r.missing,
                                   "calibration": r.calibration,
                                   "temperature": r.temperature, "threshold": r.threshold,
                                   "model": run, "weights": r.weights,
                                   "random_weights": model.random_weights,
                                   "random_note": model.random_note()}, indent=2))
            return
        width = max(7, *(len(c) + 2 for c in r.probabilities))
        click.echo(f"{'class':<{width}}{'probability':>12}  diagnosis")
        for c, v in r.ranked()[:top_k]:
            click.echo(f"{c:<{width}}{100 * v:>10.2f} %  {r.class_names.get(c, '')}")
        click.echo(r.decision.line())
        if r.missing:
            click.echo(f"missing metadata (treated as missing, as in training): "
                       f"{', '.join(r.missing)}")
        click.echo(f"(calibrated: {r.calibration}; research use only, not a diagnosis)")
        return
    bar = progress_bar("predict")
    preds = model.predict_csv(csv_path, output, embeddings=list(caches) or None,
                              progress=bar.update, on_start=lambda n: setattr(bar, "total", n))
    bar.close()
    if as_json:
        click.echo(preds.to_frame().to_json(orient="records", indent=2))
    click.echo(f"{output}: {int(preds.ok.sum())} predictions, {int((~preds.ok).sum())} "
               f"{'row(s) without an embedding' if caches else 'unreadable image(s)'}",
               err=as_json)
    missing = ", ".join(f"{f} on {n}" for f, n in preds.missing.items() if n)
    if missing:
        click.echo(f"missing metadata (treated as missing, as in training), rows: {missing} "
                   f"of {int(preds.ok.sum())}", err=as_json)


@click.command()
@predictor_options
@cache_option
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Any preset's folder (e.g. the ISIC 2018 Task 3 test set) or a CSV "
              "(image/image_id, dx).")
@dataset_options
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder [default: MODEL/eval-<data name>].")
@click.option("--include-seen", is_flag=True, help="Also score images (and images of lesions or "
              "patients) that the model trained or early-stopped on; optimistic.")
@click.option("--subgroups", help="Comma list of subgroup fields for the report's tables, or "
              "none [default: every metadata field and the set's descriptive columns].")
def evaluate(run, weights_file, device, batch_size, workers, caches, data, out, include_seen,
             subgroups, **kwargs) -> None:
    """Score a trained model on another labelled set (the report leads with balanced accuracy,
    or ROC AUC for a binary model). The labels are read as the model's task."""
    from ..api import evaluate_model

    opts = pop_dataset_options(kwargs)
    if opts["task"]:
        raise click.UsageError("evaluate reads the labels as the model's own task; drop --task")
    bar = progress_bar("evaluate")
    res = evaluate_model(run, data, out, preset=opts["preset"], spec=opts["spec_file"],
                       columns=column_overrides(opts), weights_file=weights_file, device=device,
                       include_seen=include_seen, embeddings=list(caches) or None,
                       batch_size=batch_size, num_workers=workers, progress=bar.update,
                       on_start=lambda n: setattr(bar, "total", n), subgroups=subgroups)
    bar.close()
    m, ci, info = res.metrics, res.bootstrap_ci95, res.info
    if info["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    click.echo(f"{info['n']} images ({info['layout']}); {info['metadata_note'].replace('**', '')}")
    for k in ("auc", "pauc80", "balanced_accuracy", "accuracy") if len(info["classes"]) == 2 else \
            ("balanced_accuracy", "accuracy", "macro_f1"):
        interval = f"  (95 % CI {ci[k][0]:.4f} to {ci[k][1]:.4f})" if k in ci else ""
        click.echo(f"{k:<20}{m[k]:>8.4f}{interval}" if m[k] is not None else f"{k:<20}     n/a")
    click.echo(f"report: {res.report_path}")


@click.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run folder written by fit-head.")
def card(run) -> None:
    """Rewrite the run's model card (README.md) from its metrics.json and its eval-* evaluations."""
    from ..api import write_card

    click.echo(f"model card: {write_card(run)}")
