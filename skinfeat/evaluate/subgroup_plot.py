"""Forest plot of one subgroup field: each value's headline and interval, flagged rows grey."""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_artifact
from .report import CHAR_IN, new_figure, set_margins
from .subgroups import FieldTable, SubgroupResult, plot_name


def save_forest_plots(result: SubgroupResult, out: str | Path) -> list[Path]:
    """One forest-plot PNG per field of ``result`` in ``out`` (``plot_name``); returns the paths
    written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [save_forest_png(result, t, out / plot_name(t.field)) for t in result.fields]


def save_forest_png(result: SubgroupResult, table: FieldTable, path: Path) -> Path:
    rows = table.rows
    fig, ax = new_figure((6, 1.2 + 0.4 * len(rows)))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        colour = "0.6" if r.flagged else "C0"
        if r.ci95:
            ax.plot(r.ci95, [y, y], "-", color=colour, lw=2)
        if r.headline is not None:
            ax.plot([r.headline], [y], "o", color=colour)
    if result.overall is not None:
        ax.axvline(result.overall, color="k", ls="--", lw=1, label="overall")
        ax.legend(loc="lower right", fontsize=8)
    labels = [f"{r.value}{' (few)' if r.flagged else ''} n={r.n_groups}" for r in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel(("ROC AUC" if result.metric == "auc" else "balanced accuracy")
                  + f" (95 % CI, {result.group_name} bootstrap)")
    ax.set_title(table.field + (f": gap {table.gap:.3f}" if table.gap is not None else ""))
    set_margins(fig, left=0.2 + CHAR_IN * max((len(x) for x in labels), default=1), bottom=0.55)
    write_artifact(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path
