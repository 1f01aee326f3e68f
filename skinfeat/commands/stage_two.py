"""Stage two commands: fit-head and cv on the cache."""
from __future__ import annotations

from pathlib import Path

import click

from .common import dataset_options, find_cache, load_data, pop_dataset_options, progress_bar


def head_options(f):
    for opt in reversed([
        click.option("--split", type=click.Choice(["lesion", "group", "image"]),
                     default="lesion", show_default=True, callback=lambda c, p, v:
                     "lesion" if v == "group" else v,
                     help="lesion (or group): grouped by the dataset's groups, lesions or "
                     "patients (honest); image: the reference's leaky image-level split."),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option("--head", "head_kind", type=click.Choice(["reference", "film"]),
                     default="reference", show_default=True),
        click.option("--epochs", type=int, default=40, show_default=True),
        click.option("--encoding", type=click.Choice(["robust", "reference"]),
                     default="robust", show_default=True,
                     help="robust: every field has one 'missing' value (blank, the set's token, "
                     "unseen, absent) and no dropped category; reference: the published 17-"
                     "feature encoder (mean fill, drop_first, 'unknown' a category), with "
                     "the reference's head defaults (no metadata dropout, stop on val loss)."),
        click.option("--meta-dropout", type=float, help="Probability of blanking each metadata "
                     "field of a sample in training [default: 0.2; 0 with --encoding "
                     "reference]."),
        click.option("--stop-on", type=click.Choice(["balanced_loss", "loss",
                                                     "balanced_accuracy"]),
                     help="Early-stopping criterion on val [default: balanced_loss, the class-"
                     "weighted loss that matches balanced accuracy; loss with --encoding "
                     "reference]."),
        click.option("--calibration", type=click.Choice(["logit_adjust", "temperature",
                                                         "bias_temperature"]),
                     default="logit_adjust", show_default=True,
                     help="Fitted on val: undo the class-weight prior shift, then a temperature."),
        click.option("--tta/--no-tta", default=False, show_default=True,
                     help="Average predictions over cached views."),
    ]):
        f = opt(f)
    return f


def head_config(encoding: str, **fields):
    """The head's recipe: the reference's defaults with --encoding reference, ours otherwise;
    flags given on the command line win."""
    from ..head import HeadConfig

    given = {k: v for k, v in fields.items() if v is not None}
    return HeadConfig.reference(**given) if encoding == "reference" else HeadConfig(**given)


@click.command("fit-head")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="Dataset folder (any preset) or a CSV table.")
@dataset_options
@click.option("--cache", "cache_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@head_options
@click.option("--inputs", type=click.Choice(["fused", "image", "meta"]), default="fused",
              show_default=True)
@click.option("--model", type=click.Choice(["head", "lgbm"]), default="head", show_default=True)
@click.option("--select-on", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Split that picks the epoch; 'test' reproduces the reference's flaw.")
def fit_head(data_dir, cache_path, out, split, seed, head_kind, epochs, encoding, meta_dropout,
             stop_on, calibration, tta, inputs, model, select_on, **kwargs) -> None:
    """Stage two: train the fusion head (or LightGBM) on cached embeddings + metadata."""
    from ..baseline import LGBMConfig
    from ..train import fit_run

    data = load_data(data_dir, pop_dataset_options(kwargs))
    cache_path = cache_path or find_cache(data_dir)
    res = fit_run(data, cache_path, out, split=split, seed=seed, select_on=select_on, model=model,
                  head_cfg=head_config(encoding, head=head_kind, inputs=inputs, seed=seed,
                                       max_epochs=epochs, meta_dropout=meta_dropout,
                                       stop_on=stop_on),
                  lgbm_cfg=LGBMConfig(inputs=inputs, seed=seed), tta=tta, encoding=encoding,
                  calibration=calibration)
    print_run_summary(res, out)


def print_run_summary(res: dict, out: str | Path) -> None:
    from ..metrics import headline

    m, b, info = res["metrics"], res["baseline"], res["info"]
    if info["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    click.echo(f"{info['dataset']}, task {info['task']}; split {info['split']} (test "
               f"{info['sizes']['test']} images), epoch chosen on {info['select_on']}")
    width = max(len(k) for k in headline(len(info["classes"]))) + 2
    click.echo(f"{'':<{width}}{'model':>10}{'majority':>10}")
    for k in headline(len(info["classes"])):
        click.echo(f"{k:<{width}}{_num(m[k]):>10}{_num(b[k]):>10}")
    click.echo(f"report: {Path(out) / 'report.md'}")


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def comma_list(allowed: tuple[str, ...]):
    """Click callback: 'a,b' -> ('a', 'b'), each from ``allowed``."""
    def parse(ctx, param, value: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise click.BadParameter(f"{', '.join(bad) or 'empty'}; use a comma list of "
                                     f"{', '.join(allowed)}")
        return items
    return parse


def parse_seeds(ctx, param, value: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in (value or "").split(",") if v.strip()) or None
    except ValueError:
        raise click.BadParameter("use integers, e.g. 0,1,2") from None


@click.command("cv")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="Dataset folder (any preset) or a CSV table.")
@dataset_options
@click.option("--cache", "cache_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@head_options
@click.option("--folds", type=int, default=5, show_default=True,
              help="Stratified folds, grouped by lesion unless --split image.")
@click.option("--seeds", callback=parse_seeds, help="Comma list: repeat the CV once per seed "
              "and report the spread across seeds [default: --seed].")
@click.option("--inputs", default="image,meta,fused", show_default=True,
              callback=comma_list(("image", "meta", "fused")),
              help="Comma list of input sets, each trained on the same folds.")
@click.option("--models", default="head,lgbm", show_default=True,
              callback=comma_list(("head", "lgbm")), help="Comma list: fusion head, LightGBM.")
@click.option("--jobs", type=int, default=0, show_default=True,
              help="Fits at a time, one thread each (0: one per CPU core); the results do not "
              "depend on it.")
def cv(data_dir, cache_path, out, split, seed, head_kind, epochs, encoding, meta_dropout, stop_on,
       calibration, tta, folds, seeds, inputs, models, jobs, **kwargs) -> None:
    """Stage two, k-fold CV: fusion head and LightGBM on identical folds, per input set."""
    from ..cv import CVConfig, cv_run

    table = load_data(data_dir, pop_dataset_options(kwargs))
    cache_path = cache_path or find_cache(data_dir)
    cfg = CVConfig(folds=folds, split=split, seeds=seeds or (seed,), models=models, inputs=inputs,
                   head=head_config(encoding, head=head_kind, max_epochs=epochs,
                                    meta_dropout=meta_dropout, stop_on=stop_on),
                   tta=tta, encoding=encoding, calibration=calibration)
    bar = progress_bar("cv", unit="fit")
    res = cv_run(table, cache_path, out, cfg, jobs=jobs, progress=bar.update,
                 on_start=lambda n: setattr(bar, "total", n))
    bar.close()
    print_cv_summary(res, out)


def print_cv_summary(res: dict, out: str | Path) -> None:
    if res["info"]["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    cfg = res["config"]
    click.echo(f"{res['dataset']}, task {res['task']}; {res['split']} split, {cfg['folds']} "
               f"folds x {len(cfg['seeds'])} seed(s): {res['protocol']}")
    keys = ("auc", "balanced_accuracy", "sensitivity_at_90_specificity", "accuracy") \
        if len(res["classes"]) == 2 else ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
    click.echo(f"{'model':<6}{'inputs':<8}" + "".join(f"{k:>22}" for k in keys))
    for model, by_inputs in res["summary"].items():
        for inputs, e in by_inputs.items():
            click.echo(f"{model:<6}{inputs:<8}" + "".join(
                f"{e[k]['mean']:>13.4f} ± {e[k]['std']:.4f}" for k in keys))
    click.echo(f"report: {Path(out) / 'cv_report.md'}")
