"""skinfeat audit: near-duplicates, leakage across groups and sets, label issues and outliers
from the cached embeddings."""
from __future__ import annotations

from pathlib import Path

import click

from .common import dataset_options, load_data, pop_dataset_options


@click.command("audit")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="Dataset folder (any preset) or a CSV table.")
@dataset_options
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The data set's embedding cache.")
@click.option("--against", "against_dir", type=click.Path(exists=True),
              help="Another set (a test set) to check this one against (same dataset options).")
@click.option("--against-cache", type=click.Path(exists=True, dir_okay=False),
              help="The --against set's cache, made by the same encoder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--threshold", type=float, default=None,
              help="Cosine at or above which a pair is flagged, in (0, 1] [default: calibrated, "
              "see docs/audit.md].")
@click.option("--oof", type=click.Path(exists=True, dir_okay=False),
              help="cv's oof_predictions.csv for the label issues [default: a quick "
              "linear-probe cv].")
@click.option("--labels/--no-labels", default=True, show_default=True,
              help="Rank label issues (needs cleanlab: the audit extra).")
@click.option("--top", type=int, default=50, show_default=True,
              help="Outliers listed; pairs and images shown in the contact sheets.")
@click.option("--method", type=click.Choice(["auto", "exact", "approximate"]), default="auto",
              show_default=True, help="auto: exact up to the cost of a 100k-row set, then "
                                      "approximate (faiss k-means lists).")
def audit(data_dir, cache, against_dir, against_cache, out, threshold, oof, labels, top, method,
          **kwargs) -> None:
    """Audit a data set before trusting a score: writes audit_report.md, duplicates.csv,
    label_issues.csv, outliers.csv, groups.csv and contact sheets; changes nothing."""
    from ..api import audit as run_audit

    opts = pop_dataset_options(kwargs)
    data = load_data(data_dir, opts)
    against = load_data(against_dir, opts) if against_dir else None
    res = run_audit(data, cache, against=against, against_cache=against_cache, out=out,
                    threshold=threshold, oof=oof, labels=labels, top=top, method=method)
    c = res.counts
    click.echo(f"near-duplicates (cosine >= {res.threshold:g}, {res.method}): "
               f"{c['across_sets']} across sets, {c['conflicting_labels']} conflicting labels, "
               f"{c['different_groups']} different groups, {c['same_group']} same group; "
               f"{c['merged_groups']} groups would merge")
    if c["label_issues"] >= 0:
        click.echo(f"label issues: {c['label_issues']}")
    click.echo(f"outliers: {c['outliers']}")
    click.echo(f"report: {Path(out) / 'audit_report.md'}")
