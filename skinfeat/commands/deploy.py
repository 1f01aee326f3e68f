"""From a trained run to a diagnosis: predict and evaluate."""
from __future__ import annotations

import json
import click

from ..backbone import DEVICES
from .common import progress_bar


def predictor_options(f):
    for opt in reversed([
        click.option("--model", "run", required=True, type=click.Path(exists=True, file_okay=False),
                     help="A run folder written by fit-head (config.json + weights)."),
        click.option("--weights-file", type=click.Path(exists=True, dir_okay=False),
                     help="Local backbone checkpoint (required when the model was trained on "
                     "embeddings from one; its sha256 must match)."),
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
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="One image file.")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="Batch: columns image (path) or image_id, optional age, sex, localization.")
@click.option("--age", type=float, help="Patient age in years (missing: the training mean).")
@click.option("--sex", help="male / female (missing: unknown).")
@click.option("--localization", help="Lesion site, HAM10000 spelling, e.g. back (missing: unknown).")
@click.option("--output", default="predictions.csv", show_default=True,
              type=click.Path(dir_okay=False), help="Where --csv predictions are written.")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print probabilities as JSON.")
def predict(run, weights_file, device, batch_size, workers, image, csv_path, age, sex,
            localization, output, top_k, as_json) -> None:
    """Calibrated class probabilities for a raw image (or a CSV of them) and its metadata."""
    from ..datasets import CLASS_NAMES, load_generic_csv
    from ..predict import Predictor, save_predictions

    if bool(image) == bool(csv_path):
        raise click.UsageError("pass exactly one of --image or --csv")
    if csv_path and (age is not None or sex or localization):
        raise click.UsageError("--age/--sex/--localization go with --image; a CSV has columns")
    p = Predictor(run, weights_file=weights_file, device=device, batch_size=batch_size,
                  num_workers=workers)
    if p.random_weights:
        click.echo("NOTE: RANDOM backbone weights: these probabilities mean nothing clinically.",
                   err=True)
    if image:
        probs = p.predict_image(image, age=age, sex=sex, localization=localization)
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        if as_json:
            click.echo(json.dumps({"image": image, "prediction": ranked[0][0],
                                   "probabilities": probs, "temperature": p.temperature,
                                   "model": run, "weights": p.weights}, indent=2))
            return
        click.echo(f"{'class':<7}{'probability':>12}  diagnosis")
        for c, v in ranked[:top_k]:
            click.echo(f"{c:<7}{100 * v:>10.2f} %  {CLASS_NAMES.get(c, '')}")
        click.echo(f"(temperature {p.temperature:.2f}; research use only, not a diagnosis)")
        return
    table = load_generic_csv(csv_path, labelled=False)
    bar = progress_bar("predict")
    bar.total = len(table)
    preds = p.predict_table(table, progress=bar.update)
    bar.close()
    save_predictions(preds, output)
    if as_json:
        click.echo(preds.to_frame().to_json(orient="records", indent=2))
    click.echo(f"{output}: {int(preds.ok.sum())} predictions, {int((~preds.ok).sum())} "
               "unreadable image(s)", err=as_json)


@click.command()
@predictor_options
@click.option("--data", required=True, type=click.Path(exists=True),
              help="HAM10000 folder, ISIC 2018 Task 3 test folder, or a CSV (image/image_id, dx).")
@click.option("--layout", type=click.Choice(["auto", "ham10000", "isic2018-test", "csv"]),
              default="auto", show_default=True)
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder [default: MODEL/eval-<data name>].")
def evaluate(run, weights_file, device, batch_size, workers, data, layout, out) -> None:
    """Score a trained model on another labelled set (report leads with balanced accuracy)."""
    from ..evaluate import evaluate_run

    bar = progress_bar("evaluate")
    res = evaluate_run(run, data, out, layout=layout, weights_file=weights_file, device=device,
                       batch_size=batch_size, num_workers=workers, progress=bar.update,
                       on_start=lambda n: setattr(bar, "total", n))
    bar.close()
    m, ci, info = res["metrics"], res["bootstrap_ci95"], res["info"]
    if info["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    click.echo(f"{info['n']} images ({info['layout']}); {info['metadata_note'].replace('**', '')}")
    for k in ("balanced_accuracy", "accuracy", "macro_f1"):
        click.echo(f"{k:<20}{m[k]:>8.4f}  (95 % CI {ci[k][0]:.4f} to {ci[k][1]:.4f})")
    click.echo(f"report: {res['out'] / 'evaluate_report.md'}")
