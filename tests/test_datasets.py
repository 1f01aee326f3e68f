"""The reader on each layout and on each bad input."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest

from skinfeat.data.datasets import CLASSES, DataError, load_dataset, summarize

COLUMNS = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def write_images(folder: Path, ids) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.new("RGB", (20, 15), (120, 80, 60)).save(folder / f"{i}.jpg")


def make_dir(tmp_path: Path, rows: list[str], header: str = COLUMNS, name="HAM10000_metadata.csv",
             sep=",", images=None, newline="\n", encoding="utf-8") -> Path:
    text = newline.join([header.replace(",", sep)] + [r.replace(",", sep) for r in rows]) + newline
    (tmp_path / name).write_bytes(text.encode(encoding))
    ids = images if images is not None else [r.split(",")[1] for r in rows]
    write_images(tmp_path / "HAM10000_images_part_1", ids)
    return tmp_path


ROWS = ["HAM_1,ISIC_1,nv,histo,45.0,male,back", "HAM_1,ISIC_2,nv,histo,45.0,male,back",
        "HAM_2,ISIC_3,mel,histo,,female,face", "HAM_3,ISIC_4,bcc,histo,70.0,unknown,unknown"]


def test_kaggle_layout_with_duplicate_folders(tmp_path):
    root = make_dir(tmp_path, ROWS)
    # The Kaggle archive also holds lower-case and nested copies of the image folders.
    write_images(tmp_path / "ham10000_images_part_1", ["ISIC_1", "ISIC_3"])
    write_images(tmp_path / "HAM10000_images_part_2" / "HAM10000_images_part_2", ["ISIC_4"])
    t = load_dataset(root, "ham10000").table
    assert list(t.columns) == ["image_id", "group_id", "path", "dx", "label", "age", "sex",
                               "localization"]
    assert t["label"].tolist() == [CLASSES.index(d) for d in ["nv", "nv", "mel", "bcc"]]
    assert t["age"].isna().sum() == 1
    assert all(Path(p).is_file() for p in t["path"])
    assert "dx_type" not in t.columns


def test_dataverse_layout_tab_separated_without_extension(tmp_path):
    root = make_dir(tmp_path, ROWS, name="HAM10000_metadata", sep="\t")
    assert len(load_dataset(root, "ham10000").table) == 4


def test_bom_crlf_and_upper_case_labels(tmp_path):
    rows = [r.replace(",nv,", ",NV,") for r in ROWS]
    root = make_dir(tmp_path, rows, newline="\r\n", encoding="utf-8-sig")
    t = load_dataset(root, "ham10000").table
    assert t["dx"].tolist()[:2] == ["nv", "nv"] and t["image_id"].iloc[0] == "ISIC_1"


def test_packed_zips_say_what_to_run(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text(COLUMNS + "\n" + ROWS[0] + "\n")
    with zipfile.ZipFile(tmp_path / "HAM10000_images_part_1.zip", "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(DataError, match="skinfeat data unpack"):
        load_dataset(tmp_path, "ham10000")


@pytest.mark.parametrize("header,rows,pattern", [
    ("lesion_id,image_id,age,sex,localization", ["HAM_1,ISIC_1,40,male,back"],
     "missing required column.*dx"),
    (COLUMNS, ["HAM_1,ISIC_1,melanoma,histo,40,male,back"], "unknown dx label.*melanoma"),
    (COLUMNS, ["HAM_1,ISIC_1,nv,histo,40,male,back", "HAM_1,ISIC_1,nv,histo,40,male,back"],
     "duplicate image id.*ISIC_1"),
])
def test_bad_tables_give_one_line_errors(tmp_path, header, rows, pattern):
    root = make_dir(tmp_path, rows, header=header, images=["ISIC_1"])
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(root, "ham10000")
    assert "\n" not in str(info.value) and "HAM10000_metadata.csv" in str(info.value)


def test_missing_images_are_counted_and_named(tmp_path):
    root = make_dir(tmp_path, ROWS, images=["ISIC_1", "ISIC_2"])
    with pytest.raises(DataError, match=r"2 listed image\(s\) not found.*ISIC_3, ISIC_4"):
        load_dataset(root, "ham10000")


def test_unlisted_images_warn(tmp_path, caplog):
    root = make_dir(tmp_path, ROWS, images=["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_9"])
    with caplog.at_level(logging.WARNING):
        assert len(load_dataset(root, "ham10000").table) == 4
    assert "1 image file(s) present but not listed" in caplog.text and "ISIC_9" in caplog.text


def test_bad_ages_become_missing_with_warning(tmp_path, caplog):
    rows = ["HAM_1,ISIC_1,nv,histo,forty,male,back", "HAM_2,ISIC_2,nv,histo,-3,male,back",
            "HAM_3,ISIC_3,nv,histo,130,male,back", "HAM_4,ISIC_4,nv,histo,NaN,male,back",
            "HAM_5,ISIC_5,nv,histo,55,male,back"]
    root = make_dir(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        t = load_dataset(root, "ham10000").table
    assert t["age"].isna().tolist() == [True, True, True, True, False]
    assert "not a number" in caplog.text and "outside" in caplog.text


def test_summary_counts(synth_table):
    s = summarize(synth_table)
    assert s["images"] == len(synth_table)
    assert sum(c["images"] for c in s["per_class"].values()) == s["images"]
    assert sum(k * v for k, v in s["images_per_group"].items()) == s["images"]
    assert s["lesions"] == synth_table["group_id"].nunique()
