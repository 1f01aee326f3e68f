"""Options and helpers shared by the commands."""
from __future__ import annotations

from pathlib import Path

import click

from ..data.presets import PRESETS
from ..embed.backbone import DEFAULT_BACKBONE

DEFAULT_CACHE_DIR = Path("cache")


def progress_bar(desc: str, unit: str = "img", total: int | None = None):
    """A tqdm bar (with ``total``: a percentage and an ETA), closed when the command ends."""
    from tqdm.auto import tqdm

    from .console import close_on_exit
    return close_on_exit(tqdm(desc=desc, unit=unit, total=total, dynamic_ncols=True,
                              disable=None))


def weights_options(f):
    f = click.option("--weights-file", type=click.Path(exists=True),
                     help="Offline: a model folder (as --backbone local-dir:FOLDER, which is "
                     "the first choice: the folder's own config), or a bare checkpoint for "
                     "--backbone's default config.")(f)
    f = click.option("--weights", type=click.Choice(["pretrained", "random"]), default="pretrained",
                     show_default=True, help="ImageNet weights via timm/HF hub, or seeded random "
                     "init (tests, offline smoke runs).")(f)
    return click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
                        help="A timm name (timm: prefix optional), open_clip:MODEL[:PRETRAINED], "
                        "hf:ORG/NAME, or a local folder: hf:PATH, open_clip:PATH, local-dir:PATH "
                        "(see skinfeat backbones).")(f)


def _fields(ctx, param, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip().lower() for v in value.split(",")
                                            if v.strip())


def dataset_options(f):
    """--preset / --spec / --task and the column flags of a generic CSV, on every command that
    reads a dataset (``load_data`` turns them into a ``Dataset``)."""
    for opt in reversed([
        click.option("--preset", type=click.Choice(["auto", *PRESETS]), default="auto",
                     show_default=True, help="Dataset layout; auto detects it from the files."),
        click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False),
                     help="Dataset description file (JSON or TOML; see the README)."),
        click.option("--task", help="multiclass, or binary:CLASS (one class against the rest) "
                     "[default: the set's own; two-class sets are binary]."),
        click.option("--image-col", help="CSV: column of image ids or paths."),
        click.option("--label-col", help="CSV: column of class labels."),
        click.option("--group-col", help="CSV: column that groups images (lesion, patient)."),
        click.option("--numeric", callback=_fields, help="CSV: comma list of numeric fields."),
        click.option("--categorical", callback=_fields,
                     help="CSV: comma list of categorical fields."),
    ]):
        f = opt(f)
    return f


def merge_groups_option(f):
    """--merge-duplicate-groups: join the groups of an audit's flagged pairs before splitting."""
    return click.option("--merge-duplicate-groups", "merge_duplicates",
                        type=click.Path(exists=True),
                        help="An audit's duplicates.csv (or its folder): join the groups of its "
                        "flagged pairs before splitting (skinfeat audit).")(f)


DATASET_KEYS = ("preset", "spec_file", "task", "image_col", "label_col", "group_col", "numeric",
                "categorical", "merge_duplicates", "drop_label_issues")


def pop_dataset_options(kwargs: dict) -> dict:
    """Remove the dataset options from a command's keyword arguments."""
    return {k: kwargs.pop(k, None) for k in DATASET_KEYS}


def column_overrides(opts: dict) -> dict:
    """The CSV column flags as ``DatasetSpec`` field changes."""
    cols = {"image_column": opts.get("image_col"), "label_column": opts.get("label_col"),
            "group_column": opts.get("group_col"), "numeric": opts.get("numeric"),
            "categorical": opts.get("categorical")}
    if opts.get("group_col"):
        cols["group_name"] = opts["group_col"].split("_")[0]
    return {k: v for k, v in cols.items() if v is not None}


def load_data(data: str, opts: dict, images: bool = True):
    """The ``Dataset`` at ``data`` as the dataset options describe it (``images=False``: the
    tables alone; stage two needs the labels and the cache, not the image files)."""
    from ..api import Task, drop_label_issues, load_dataset, merge_duplicate_groups

    loaded = load_dataset(data, opts["preset"], opts["spec_file"], task=Task.parse(opts["task"]),
                          images=images, **column_overrides(opts))
    if opts.get("merge_duplicates"):
        loaded = merge_duplicate_groups(loaded, opts["merge_duplicates"])
        click.echo(f"merged {loaded.table.attrs['merged_groups']} group(s) joined by the "
                   f"near-duplicate pairs of {opts['merge_duplicates']}")
    if opts.get("drop_label_issues"):
        loaded = drop_label_issues(loaded, opts["drop_label_issues"])
        dropped = loaded.table.attrs["dropped_label_issues"]
        click.echo(f"dropped {len(dropped)} image(s) listed as label issues in "
                   f"{opts['drop_label_issues']}: {', '.join(dropped[:10])}"
                   + (", ..." if len(dropped) > 10 else ""))
    return loaded


def data_name(data: str) -> str:
    path = Path(data).resolve()
    return path.stem if path.is_file() else path.name


def default_cache(data: str, backbone: str, weights: str) -> Path:
    safe = backbone.replace("/", "_").replace(":", "_")   # hf:ORG/NAME is not a file name
    return DEFAULT_CACHE_DIR / f"{data_name(data)}-{safe}-{weights}.h5"


def find_cache(data: str) -> Path:
    hits = sorted(DEFAULT_CACHE_DIR.glob(f"{data_name(data)}-*.h5"))
    if len(hits) != 1:
        raise click.UsageError(f"pass --cache: {len(hits)} candidate caches for {data} in "
                               f"{DEFAULT_CACHE_DIR}/ ({', '.join(map(str, hits)) or 'none'})")
    return hits[0]


crossing_option = click.option(
    "--crossing-groups", type=click.Choice(["refuse", "drop", "majority"]), default="refuse",
    show_default=True, help="With --split by:COLUMN, the groups (lesions, patients) whose "
    "images sit in more than one value of COLUMN: refuse the split, drop those images, or "
    "move each group to its majority value; the count is printed and the images listed in "
    "OUT/crossing_groups.csv.")


def settle_crossing(data, split, how: str):
    """``data`` with ``--crossing-groups`` applied, and the note to print and save (or None)."""
    from ..api import settle_crossing_groups

    data, note = settle_crossing_groups(data, split, how)
    if note is not None:
        click.echo(note.describe())
    return data, note
