"""Groups that cross the values of a ``--split by:COLUMN`` (``--crossing-groups``).

A held-out source must share no lesion (patient) with training, so ``splits.source_values``
refuses a group whose images sit in two values of the column. HAM10000 has 9 such melanoma
lesions (26 images) in both vidir_modern and vidir_molemax, which made leave-one-source-out
unreachable on the real metadata. Opt in to settle them, and every run says how many:
  * ``refuse`` (the default): the one-line error, naming the groups;
  * ``drop``: leave those groups' images out of the run;
  * ``majority``: give each such group the value most of its images have (a tie: the first
    value in sorted order), so the group moves whole to one side.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write
from ..errors import InputError
from .datasets import Dataset, load_dataset
from .splits import parse_split

log = logging.getLogger(__name__)

CROSSING_CHOICES = ("refuse", "drop", "majority")


@dataclass(frozen=True)
class CrossingNote:
    """What ``--crossing-groups`` did: the rule, the column, and one row per affected image
    (image_id, group_id, its value before, its value after; after is empty when dropped)."""
    how: str
    column: str
    rows: pd.DataFrame

    @property
    def groups(self) -> int:
        return int(self.rows["group_id"].nunique())

    def save(self, folder: str | Path) -> Path:
        """``crossing_groups.csv`` in the run folder: the affected images, before and after."""
        path = Path(folder) / "crossing_groups.csv"
        frame = self.rows.assign(column=self.column, action=self.how)
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
        return path

    def describe(self) -> str:
        done = {"drop": "left out", "majority": "moved to their majority value"}[self.how]
        return (f"--crossing-groups {self.how}: {self.groups} group(s) ({len(self.rows)} "
                f"image(s)) with images in more than one {self.column} value {done}")


def settle_crossing_groups(data: Dataset | str | Path, split: str, how: str = "refuse"
                           ) -> tuple[Dataset, CrossingNote | None]:
    """``data`` with the groups (lesions, patients) whose images sit in more than one value of
    a ``by:COLUMN`` split's column settled by ``how`` (``--crossing-groups``: refuse, drop
    them, or move each to its majority value), and a note of what was done (None: nothing:
    another split, ``refuse``, no crossing group). ``data``: a Dataset or a path to one."""
    if not isinstance(data, Dataset):
        data = load_dataset(data, images=False)
    if how not in CROSSING_CHOICES:
        raise InputError(f"--crossing-groups {how!r}: use one of {', '.join(CROSSING_CHOICES)}")
    kind = parse_split(split)
    if how == "refuse" or not kind.by:
        return data, None
    full = data.with_described()
    column = kind.column
    if column is None or column not in full.columns:
        return data, None   # source_values names the missing column
    values = full[column].astype(object).where(full[column].notna(), "").astype(str)
    per_group = values.groupby(full["group_id"].to_numpy()).nunique()
    crossing = full["group_id"].isin(per_group.index[per_group > 1]).to_numpy()
    if not crossing.any():
        return data, None
    rows = pd.DataFrame({"image_id": full.loc[crossing, "image_id"].astype(str),
                         "group_id": full.loc[crossing, "group_id"].astype(str),
                         "before": values[crossing]})
    if how == "drop":
        keep = ~crossing
        data = replace(data, table=data.table[keep].reset_index(drop=True),
                       described=None if data.described is None
                       else data.described[keep].reset_index(drop=True))
        rows["after"] = ""
    else:
        counts = rows.groupby(["group_id", "before"]).size().reset_index(name="n")
        counts = counts.sort_values(["group_id", "n", "before"], ascending=[True, False, True])
        majority = counts.drop_duplicates("group_id").set_index("group_id")["before"]
        rows["after"] = rows["group_id"].map(majority)
        new = values.copy()
        new[crossing] = rows["after"].to_numpy()
        where = "table" if column in data.table.columns else "described"
        frame = getattr(data, where).copy()
        frame[column] = new.to_numpy()
        data = replace(data, **{where: frame})
    note = CrossingNote(how, column, rows.reset_index(drop=True))
    log.info("%s", note.describe())
    return data, note
