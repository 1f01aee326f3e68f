"""skinfeat compare: caches (encoders) and / or models on identical folds, paired differences."""
from __future__ import annotations

from pathlib import Path

import click

from .common import load_data, pop_dataset_options, progress_bar, settle_crossing
from .stage_two import (
    caches_of,
    cv_options,
    cv_recipe,
    model_list,
    recipe_options,
    stage_two_inputs,
)


@click.command("compare")
@stage_two_inputs
@cv_options
@click.option("--models", default="linear", show_default=True,
              callback=model_list,
              help="Comma list; every cache x model is one entry.")
@click.option("--inputs", type=click.Choice(["image", "fused", "meta"]), default="image",
              show_default=True, help="The input set every entry trains on.")
@click.option("--metric", type=click.Choice(["balanced_accuracy", "auc", "pauc80"]),
              default="balanced_accuracy", show_default=True,
              help="The metric of the paired differences (auc, pauc80: binary tasks).")
@click.option("--n-boot", type=int, default=2000, show_default=True,
              help="Bootstrap resamples of whole groups (lesions / patients).")
@recipe_options
def compare(data_dir, caches, out, split, crossing_groups, folds, seeds, jobs, models, inputs,
            metric, n_boot, config_file, **kwargs) -> None:
    """Each --cache (one encoder each, not fused) x each model on identical grouped folds; the
    first entry is the reference the others are paired against (group bootstrap)."""
    from ..api import compare as run_compare

    table, crossing = settle_crossing(load_data(data_dir, pop_dataset_options(kwargs),
                                                images=False), split, crossing_groups)
    recipe, models, params = cv_recipe(config_file, kwargs, models)
    bar = progress_bar("compare", unit="fit")
    res = run_compare(table, caches_of(caches, data_dir), models=models, inputs=inputs,
                      folds=folds, metric=metric, recipe=recipe, params=params, seeds=seeds,
                      split=split, n_boot=n_boot, jobs=jobs, out=out, progress=bar.update,
                      on_start=lambda n: setattr(bar, "total", n))
    bar.close()
    if crossing is not None:
        crossing.save(out)
    if res.raw["random_weights"]:
        click.echo("NOTE: RANDOM backbone weights: these numbers only show the pipeline works.")
    click.echo(f"{res.raw['dataset']}: {res.raw['folds']} folds x {len(res.raw['seeds'])} "
               f"seed(s), {metric}; differences against {res.reference}, 95 % interval over "
               f"{res.raw['group']}s")
    width = max(len(e) for e in res.table["entry"]) + 2
    for _, r in res.table.iterrows():
        head = f"{r['entry']:<{width}}{r[f'{metric}_mean']:.4f} ± {r[f'{metric}_std']:.4f}"
        if r["entry"] == res.reference:
            click.echo(f"{head}   reference")
        else:
            noise = "  within noise" if r["within_noise"] else ""
            click.echo(f"{head}   {r['diff']:+.4f} [{r['diff_low']:+.4f}, "
                       f"{r['diff_high']:+.4f}] p={r['p_value']:.4f}{noise}")
    click.echo(f"report: {Path(out) / 'compare_report.md'}")
