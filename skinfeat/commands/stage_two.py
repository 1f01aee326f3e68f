"""Stage two commands: fit-head, cv and tune on the cache(s)."""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import click

from .common import (
    crossing_option,
    dataset_options,
    find_cache,
    load_data,
    merge_groups_option,
    pop_dataset_options,
    progress_bar,
    settle_crossing,
)

# Help for the recipe's flags; every field of HeadConfig and LGBMConfig gets a flag, so a
# field added there is settable at once (and from --config).
HEAD_HELP = {
    "head": "reference: the published Keras head; film: metadata gates the image embedding.",
    "lr": "Adam learning rate.", "batch_size": "Minibatch size.",
    "negative_ratio": "Binary tasks: each epoch trains all positives and a fresh random draw of "
    "R x as many negatives (class weights follow) [default: off, every row].",
    "max_epochs": "Upper bound on epochs with early stopping.",
    "patience": "Epochs without improvement on val before stopping.",
    "epochs": "Train exactly this many epochs: no early stopping, the last weights kept (val "
              "still calibrates).",
    "class_weight": "balanced: each class weighs alike in the loss; none: natural prevalence.",
    "meta_dropout": "Probability of blanking each metadata field of a sample in training "
                    "[0.2; 0 with --encoding reference].",
    "meta_dropout_all": "Probability of blanking every metadata field of a sample at once.",
    "view_augment": "Sample one cached view (flip, rotation) per image per epoch, if cached.",
    "stop_on": "Early-stopping criterion on val [balanced_loss; loss with --encoding "
               "reference].",
    "meta_width": "Metadata MLP: first layer width.",
    "meta_out": "Metadata MLP: output width.",
    "dense_width": "Width of the dense layer before the logits.",
    "image_dropout": "Dropout on the image embedding.",
    "dropout": "Dropout on the joined features.",
    "weight_decay": "Adam's L2 penalty.",
}
LGBM_HELP = {"pca_dim": "PCA width of the embedding (0: every column).",
             "num_leaves": "Leaves per tree.", "max_bin": "Histogram bins.",
             "colsample": "Feature fraction per tree.", "learning_rate": "Boosting rate.",
             "n_estimators": "Most boosting rounds.",
             "early_stopping": "Rounds without improvement on val before stopping.",
             "num_threads": "Threads (0: every core; cv workers use 1)."}
CHOICES = {"head": ("reference", "film"), "stop_on": ("balanced_loss", "loss",
                                                      "balanced_accuracy"),
           "class_weight": ("balanced", "none")}
SHARED = ("inputs", "seed")   # set by the run, not per model


class ModelChoice(click.Choice):
    """``--model``: a kind of the model registry, read when the command runs (a model
    registered after import is a choice too)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self):
        from ..api import model_names
        return model_names()

    @choices.setter
    def choices(self, value) -> None:
        pass


def _option(prefix: str, field, help_text: str):
    """A click option for one dataclass field, default None (so a file's value survives)."""
    flag = "--" + prefix + field.name.replace("_", "-")
    dest = ("lgbm__" if prefix else "head__") + field.name
    kind = str(field.type)
    if "bool" in kind:
        no = "--" + prefix + "no-" + field.name.replace("_", "-")
        return click.option(f"{flag}/{no}", dest, default=None, help=help_text)
    if field.name in CHOICES:
        return click.option(flag, dest, type=click.Choice(CHOICES[field.name]), help=help_text)
    typ = int if "int" in kind else float if "float" in kind else str
    return click.option(flag, dest, type=typ, help=f"{help_text} [default: {field.default}]"
                        if field.name not in ("meta_dropout", "stop_on", "epochs", "negative_ratio")
                        else help_text)


def recipe_options(f):
    """Every HeadConfig field as --NAME and every LGBMConfig field as --lgbm-NAME, plus
    --config FILE and the run-level flags; values are None unless given."""
    from ..api import HeadConfig, LGBMConfig

    opts = [
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="A recipe (JSON or TOML; a run's config.json or a tune result "
                     "reproduces it); flags given here win."),
        click.option("--seed", type=int, help="Split and training seed [default: 42]."),
        click.option("--encoding", type=click.Choice(["robust", "reference"]),
                     help="robust: every field has one 'missing' value (blank, the set's token, "
                     "unseen, absent) and no dropped category; reference: the published 17-"
                     "feature encoder (mean fill, drop_first, 'unknown' a category), with "
                     "the reference's head defaults (no metadata dropout, stop on val loss) "
                     "[default: robust]."),
        click.option("--calibration", type=click.Choice(["logit_adjust", "temperature",
                                                         "bias_temperature"]),
                     help="Fitted on val: undo the class-weight prior shift, then a "
                     "temperature [default: logit_adjust]."),
        click.option("--tta/--no-tta", default=None,
                     help="Average predictions over cached views [default: off]."),
        click.option("--group-context/--no-group-context", default=None,
                     help="Append patient context features (z-score and rank of each numeric "
                     "field within the patient, distance from the patient's mean embedding); "
                     "predict then needs the patient's lesions in one --csv [default: off]."),
        click.option("--fallback/--no-fallback", default=None,
                     help="A fused head carries an image-only model that scores the rows "
                     "whose every metadata field is missing (not with --encoding reference "
                     "or --group-context) [default: on]."),
    ]
    opts += [   # the ensemble's (--model ensemble; learn/ensemble.py)
        click.option("--members", "head__members",
                     callback=lambda c, p, v: model_list(c, p, v),
                     help="--model ensemble: comma list of its member models, each with its "
                     "defaults and the flags it has (--lr: the head's) [default: head,linear]."),
        click.option("--combine", "head__combine", type=click.Choice(["logmean", "stack"]),
                     help="--model ensemble: the mean of the members' calibrated "
                     "log-probabilities, or a logistic regression on them fitted on inner "
                     "out-of-fold predictions [default: logmean]."),
    ]
    opts += [_option("", fl, HEAD_HELP.get(fl.name, fl.name)) for fl in fields(HeadConfig)
             if fl.name not in SHARED]
    opts += [_option("lgbm-", fl, LGBM_HELP.get(fl.name, fl.name)) for fl in fields(LGBMConfig)
             if fl.name not in SHARED]
    for opt in reversed(opts):
        f = opt(f)
    return f


def cache_option(f):
    return click.option("--cache", "caches", multiple=True,
                        type=click.Path(exists=True, dir_okay=False),
                        help="Embedding cache (any HDF5 file with image_id and embedding); "
                        "repeat to fuse several per image, in order.")(f)


def stage_two_inputs(f):
    """--data, the dataset options, --cache (repeatable) and --out of fit-head, cv and tune."""
    f = click.option("--out", required=True, type=click.Path(file_okay=False))(f)
    f = cache_option(f)
    f = merge_groups_option(f)
    f = dataset_options(f)
    return click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
                        help="Dataset folder (any preset) or a CSV table (image files not "
                        "needed).")(f)


def pop_recipe(kwargs: dict) -> tuple[dict, dict]:
    """Remove the --NAME / --lgbm-NAME values from a command's keyword arguments."""
    head = {k[6:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("head__")}
    lgbm = {k[6:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("lgbm__")}
    return head, lgbm


def run_config(config_file: str | None, run: dict, head: dict, lgbm: dict):
    """Defaults < --config FILE < flags (``skinfeat.make_recipe``)."""
    from ..api import make_recipe

    return make_recipe(config_file, run=run, head=head, lgbm=lgbm)


def caches_of(caches: tuple, data_dir: str) -> list:
    return list(caches) if caches else [find_cache(data_dir)]


subgroups_option = click.option(
    "--subgroups", help="Comma list of subgroup fields for the report's tables, or none "
    "[default: every metadata field and the data set's descriptive columns].")


@click.command("fit-head")
@stage_two_inputs
@click.option("--split", callback=lambda c, p, v: "group" if v == "lesion" else v,
              help="group (or lesion, its older name): grouped by the dataset's groups, lesions "
              "or patients (honest); image: the reference's leaky image-level split; none: train "
              "on every row but a grouped validation part (the model to deploy); by:COLUMN=VALUE: "
              "score the rows of that value, train on the others (e.g. "
              "by:dataset=rosendahl) [default: group].")
@click.option("--test-size", type=float, help="Test share of the rows [default: 0.2].")
@click.option("--val-size", type=float, help="Validation share of the rows [default: 0.1].")
@click.option("--inputs", type=click.Choice(["fused", "image", "meta"]),
              help="[default: fused]")
@click.option("--model", type=ModelChoice(), help="A model of the registry: ensemble (the "
              "fusion head and a linear probe, their calibrated log-probabilities averaged), "
              "head, linear, lgbm, or one registered [default: ensemble; head with --encoding "
              "reference].")
@click.option("--select-on", type=click.Choice(["val", "test"]),
              help="Split that picks the epoch; 'test' reproduces the reference's flaw "
              "[default: val].")
@crossing_option
@subgroups_option
@recipe_options
def fit_head(data_dir, caches, out, config_file, subgroups, crossing_groups, **kwargs) -> None:
    """Stage two: train a model (by default the fusion head + linear probe ensemble) on
    cached embeddings + metadata."""
    from ..api import fit

    head, lgbm = pop_recipe(kwargs)
    data = load_data(data_dir, pop_dataset_options(kwargs), images=False)
    inputs = kwargs.pop("inputs")
    head["inputs"] = lgbm["inputs"] = inputs
    recipe = run_config(config_file, kwargs, head, lgbm)
    data, crossing = settle_crossing(data, recipe.split, crossing_groups)
    res = fit(data, caches_of(caches, data_dir), recipe=recipe, out=out, subgroups=subgroups)
    if crossing is not None:
        crossing.save(out)
    print_run_summary(res.metrics, res.baseline, res.info, out)


def print_run_summary(metrics: dict, baseline: dict, info, out: str | Path) -> None:
    """The headline metrics of a run beside the majority baseline; ``info``: its
    ``RunSummary``."""
    if info.random_note:
        click.echo(info.random_note)
    scored = info.scored_on
    click.echo(f"{info.dataset}, task {info.task}; split {info.split} ({scored} "
               f"{info.sizes[scored]} images); {info.model_words}; {info.stopping}"
               + ("; scores on val are optimistic" if scored != "test" else ""))
    keys = info.headline
    width = max(len(k) for k in keys) + 2
    click.echo(f"{'':<{width}}{'model':>10}{'majority':>10}")
    for k in keys:
        click.echo(f"{k:<{width}}{_num(metrics[k]):>10}{_num(baseline[k]):>10}")
    click.echo(f"report: {Path(out) / 'report.md'}")


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def model_list(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback: a comma list of the model registry's kinds."""
    from ..api import model_names
    return comma_list(model_names)(ctx, param, value)


def comma_list(allowed):
    """Click callback: 'a,b' -> ('a', 'b'), each from ``allowed`` (or ``allowed()``)."""
    def parse(ctx, param, value: str | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        choices = allowed() if callable(allowed) else allowed
        items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise click.BadParameter(f"{', '.join(bad) or 'empty'}; use a comma list of "
                                     f"{', '.join(choices)}")
        return items
    return parse


def parse_seeds(ctx, param, value: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in (value or "").split(",") if v.strip()) or None
    except ValueError:
        raise click.BadParameter("use integers, e.g. 0,1,2") from None


def cv_options(f):
    for opt in reversed([
        click.option("--split", default="group", show_default=True, callback=lambda c, p, v:
                     "group" if v == "lesion" else v,
                     help="group (or lesion): grouped folds (honest); image: the reference's "
                     "leaky image-level folds; by:COLUMN: one fold per value of COLUMN "
                     "(leave-one-source-out, e.g. by:dataset)."),
        crossing_option,
        subgroups_option,
        click.option("--folds", type=int, default=5, show_default=True,
                     help="Stratified folds, grouped by the dataset's groups unless "
                     "--split image."),
        click.option("--seeds", callback=parse_seeds, help="Comma list: repeat the CV once per "
                     "seed and report the spread across seeds [default: --seed]."),
        click.option("--jobs", type=int, default=0, show_default=True,
                     help="Tasks at a time, one thread each (0: one per CPU core); the results "
                     "do not depend on it."),
    ]):
        f = opt(f)
    return f


def cv_recipe(config_file, kwargs: dict, models: tuple[str, ...] | None):
    """The recipe of the cv command (file < flags), its models (None: the recipe's model and
    LightGBM) and each model's config, its flags removed from ``kwargs``."""
    from ..api import default_models, model_configs

    head, lgbm = pop_recipe(kwargs)
    run = {k: kwargs.pop(k) for k in ("seed", "encoding", "calibration", "tta",
                                       "group_context", "fallback")}
    recipe = run_config(config_file, run, head, lgbm)
    models = models or default_models(recipe.model)
    return recipe, models, model_configs(models, recipe, config_file, head=head, lgbm=lgbm)


@click.command("cv")
@stage_two_inputs
@cv_options
@click.option("--inputs", callback=comma_list(("image", "meta", "fused")),
              help="Comma list of input sets, each trained on the same folds [default: "
              "image,meta,fused; a set without metadata fields: image].")
@click.option("--models", callback=model_list,
              help="Comma list of the registry's models: ensemble (head + linear probe), head "
              "(fusion head), linear (linear probe), lgbm (LightGBM), or one registered "
              "[default: the recipe's model and lgbm: ensemble,lgbm; head,lgbm with "
              "--encoding reference].")
@click.option("--drop-label-issues", type=click.Path(exists=True),
              help="An audit's label_issues.csv (or its folder): leave those images out; the "
              "report lists them (skinfeat audit).")
@click.option("--save-models", is_flag=True, help="Write every fold's bundle and, per model and "
              "input set, an ensemble bundle (models/MODEL_INPUTS/) for predict and evaluate.")
@recipe_options
def cv(data_dir, caches, out, split, crossing_groups, subgroups, folds, seeds, jobs, inputs,
       models, save_models, config_file, **kwargs) -> None:
    """Stage two, k-fold CV: the default model (or --models) and LightGBM on identical folds,
    per input set."""
    from ..api import cross_validate

    table, crossing = settle_crossing(load_data(data_dir, pop_dataset_options(kwargs),
                                                images=False), split, crossing_groups)
    recipe, models, params = cv_recipe(config_file, kwargs, models)
    bar = progress_bar("cv", unit="fit")
    res = cross_validate(table, caches_of(caches, data_dir), folds=folds, models=models,
                         inputs=inputs, recipe=recipe, params=params, seeds=seeds, split=split,
                         jobs=jobs,
                         save_models=save_models, out=out, progress=bar.update,
                         subgroups=subgroups,
                         on_start=lambda n: setattr(bar, "total", n))
    bar.close()
    if crossing is not None:
        crossing.save(out)
    print_cv_summary(res, out)


def print_cv_summary(res, out: str | Path) -> None:
    """The mean +- std table of a ``CVResult``."""
    if res.info["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    run = res.run
    cfg = run.config
    click.echo(f"{run.dataset}, task {run.task}; {run.split} split, {cfg['folds']} "
               f"folds x {len(cfg['seeds'])} seed(s): {run.protocol}")
    keys = ("auc", "pauc80", "balanced_accuracy", "sensitivity_at_90_specificity", "accuracy") \
        if len(run.classes) == 2 else ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
    click.echo(f"{'model':<7}{'inputs':<8}" + "".join(f"{k:>22}" for k in keys))
    for model, by_inputs in run.summary.items():
        for inputs, e in by_inputs.items():
            click.echo(f"{model:<7}{inputs:<8}" + "".join(
                f"{e[k]['mean']:>13.4f} ± {e[k]['std']:.4f}" for k in keys))
    for name, where in res.model_dirs.items():
        click.echo(f"models {name}: {where} (fold ensemble; each fold in its own folder)")
    click.echo(f"report: {Path(out) / 'cv_report.md'}")


@click.command("tune")
@stage_two_inputs
@click.option("--trials", type=int, default=50, show_default=True,
              help="Finished trials the study should hold (shared by every worker).")
@click.option("--folds", type=int, default=5, show_default=True,
              help="CV folds per trial, on the rows outside the held-out test part.")
@click.option("--test-size", type=float, default=0.2, show_default=True,
              help="Grouped test part held out before the search, scored once at the end.")
@click.option("--split", type=click.Choice(["group", "lesion", "image"]), default="group",
              show_default=True, callback=lambda c, p, v: "group" if v == "lesion" else v)
@click.option("--inputs", type=click.Choice(["fused", "image", "meta"]),
              help="[default: fused]")
@click.option("--storage", help="Optuna storage URL (sqlite:///tune.db; postgresql://...): "
              "workers with the same URL and --study-name share one study; a rerun resumes.")
@click.option("--study-name", default="skinfeat-tune", show_default=True)
@click.option("--metric", type=click.Choice(["balanced_accuracy", "auc", "pauc80"]),
              help="What trials are ranked by [default: auc for a binary task, else "
              "balanced_accuracy]; auc and pauc80 need a binary task.")
@click.option("--jobs", type=int, default=0, show_default=True,
              help="Worker processes on this machine sharing the study, one thread each (0: "
              "one per CPU core); with more than one, the search order depends on timing.")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Stop a trial whose folds' best validation loss trails the median of the "
              "trials before it at the same epoch (Optuna's MedianPruner, after 5 trials and 5 "
              "epochs).")
@recipe_options
def tune(data_dir, caches, out, trials, folds, test_size, split, inputs, storage, study_name,
         metric, jobs, prune, config_file, **kwargs) -> None:
    """Search the head's hyperparameters (Optuna), honestly: grouped CV on the rows outside a
    held-out test part, which scores the chosen configuration once."""
    try:
        import optuna
    except ImportError as exc:
        raise click.ClickException(
            f"tune needs optuna: pip install -e '.[tune]' ({exc})") from exc
    from ..api import tune as run_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # the progress bar says it all
    head, lgbm = pop_recipe(kwargs)
    head["inputs"] = inputs
    data = load_data(data_dir, pop_dataset_options(kwargs), images=False)
    start = run_config(config_file, kwargs, head, lgbm)
    bar = progress_bar("tune", unit="trial", total=trials)
    res = run_tune(data, caches_of(caches, data_dir), out, trials=trials, folds=folds,
                   recipe=start, storage=storage, study_name=study_name,
                   jobs=jobs or os.cpu_count() or 1, test_size=test_size, split=split,
                   metric=metric, prune=prune, progress=bar.update)
    bar.close()
    metric = res.metric
    click.echo(f"best trial {res.best['number']}: CV {metric} {res.best['value']:.4f}; "
               f"held-out {metric} {res.held_out['metrics'][metric]:.4f} "
               f"({res.held_out['n']} images)")
    click.echo(f"config: {res.best_config} (fit-head --config)")
    click.echo(f"report: {res.report_path}")
