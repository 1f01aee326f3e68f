"""Bad input through the command line: a one-line error naming the file and the problem, or a
recorded skip; never a traceback, never a silently wrong result.

The README's "Bad input and faults" table points at these tests (and at test_datasets.py,
test_metadata.py and test_splits.py for what those already cover at the library level).
"""
from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY
from PIL import Image
from test_datasets import COLUMNS, ROWS, make_dir

from skinfeat.cli import main
from skinfeat.data.datasets import index_images, load_dataset
from skinfeat.data.splits import assign_split, fold_ids
from skinfeat.embed.cache import read_cache
from skinfeat.embed.extract import ImageFiles
from skinfeat.embed.transform import TransformSpec, load_image, preprocess
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.learn.train import align_embeddings
from skinfeat.workflows.fit import fit_run

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input

# Small inputs keep the end-to-end runs to a couple of seconds on 2 CPU cores.
EXTRACT = ["--backbone", TINY, "--weights", "random", "--precision", "fp32", "--workers", "0",
           "--image-size", "64"]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(r) -> None:
    assert r.exit_code == 0 and r.exception is None, r.output
    assert "Traceback" not in r.output


def assert_one_line_error(r, *needles: str) -> None:
    """Exit 1, no traceback, the output ends in one ``Error: ...`` line holding every needle
    (notes printed before the failure may precede it)."""
    assert isinstance(r.exception, SystemExit) and r.exit_code == 1, (r.exception, r.output)
    assert "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("Error:") and sum(x.startswith("Error:") for x in lines) == 1, \
        r.output
    for needle in needles:
        assert needle in lines[-1], (needle, r.output)


# ---------------------------------------------------------------- image files
def png_of_size(path: Path, width: int, height: int) -> None:
    """A real, valid 1-bit black PNG of any size, written row by row: 30000x30000 is ~110 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def red_square_jpeg(path: Path, orientation: int | None = None) -> None:
    """40x20 blue image, red 10x10 square in the stored top-left corner, optional EXIF rotation."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, format="JPEG", quality=95, exif=exif)


def noisy_jpeg_bytes() -> bytes:
    from io import BytesIO
    buf = BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


# kind -> (write the file at path, reason the skip records)
UNREADABLE = {
    # Cut in the middle of the scan data, as an interrupted copy leaves it.
    "truncated": (lambda p: p.write_bytes(noisy_jpeg_bytes()[:2000]), "OSError"),
    "zero_byte": (lambda p: p.write_bytes(b""), "UnidentifiedImageError"),
    "not_an_image": (lambda p: p.write_text("lesion_id,image_id\nthis is a CSV\n"),
                     "UnidentifiedImageError"),
    "bomb_30000": (lambda p: png_of_size(p, 30000, 30000), "DecompressionBombError"),
    # 100 Mpx: inside PIL's warning band, which load_image turns into a refusal too.
    "bomb_10000": (lambda p: png_of_size(p, 10000, 10000), "DecompressionBombWarning"),
}
# kind -> (write the file at path, expected RGB at a pixel of the decoded image)
CONVERTED = {
    "png_named_jpg": (lambda p: Image.new("RGB", (32, 24), (200, 10, 10)).save(p, format="PNG"),
                      (200, 10, 10)),
    "tiff_named_jpg": (lambda p: Image.new("RGB", (32, 24), (200, 10, 10)).save(p, format="TIFF"),
                       (200, 10, 10)),
    "grayscale_jpg": (lambda p: Image.new("L", (32, 24), 100).save(p, format="JPEG"),
                      (100, 100, 100)),
    "cmyk_jpg": (lambda p: Image.new("CMYK", (32, 24), (0, 200, 200, 0)).save(p, format="JPEG"),
                 (255, 55, 55)),
    # Transparent pixels are composited on white, not black.
    "rgba_png": (lambda p: Image.new("RGBA", (32, 24), (200, 10, 10, 0)).save(p, format="PNG"),
                 (255, 255, 255)),
    "palette_png": (lambda p: Image.new("RGB", (32, 24), (200, 10, 10))
                    .convert("P", palette=Image.ADAPTIVE).save(p, format="PNG"), (200, 10, 10)),
    # 16-bit grey: PIL's own convert() would clip 30000 to 255 (white); it is rescaled instead.
    "grayscale_16bit_png": (lambda p: Image.fromarray(np.full((24, 32), 30000, np.uint16))
                            .save(p, format="PNG"), (117, 117, 117)),
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_image_is_a_recorded_skip_with_a_reason(tmp_path, kind):
    write, reason = UNREADABLE[kind]
    path = tmp_path / "ISIC_1.jpg"
    write(path)
    i, x, why = ImageFiles([str(path)], TransformSpec(size=32))[0]
    assert why.startswith(reason) and "\n" not in why, why
    assert x.shape == (1, 3, 32, 32)  # the image and no views


def test_bomb_test_files_stay_small(tmp_path):
    png_of_size(tmp_path / "big.png", 30000, 30000)
    assert (tmp_path / "big.png").stat().st_size < 200_000
    data = (tmp_path / "big.png").read_bytes()
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (30000, 30000)


def test_32bit_pixels_are_refused_not_guessed(tmp_path):
    Image.new("F", (8, 8), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="no known value range"):
        load_image(tmp_path / "f.tif", TransformSpec())


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_other_formats_and_modes_decode_to_rgb(tmp_path, kind):
    write, rgb = CONVERTED[kind]
    path = tmp_path / ("x.png" if kind.endswith("png") else "x.jpg")
    write(path)
    img = load_image(path, TransformSpec())
    assert img.mode == "RGB" and img.size == (32, 24)
    np.testing.assert_allclose(img.getpixel((16, 12)), rgb, atol=3)


@pytest.mark.parametrize("orientation,size,corner", [
    (None, (40, 20), "top_left"), (1, (40, 20), "top_left"), (3, (40, 20), "bottom_right"),
    (6, (20, 40), "top_right"), (8, (20, 40), "bottom_left")])
def test_exif_orientation_is_honoured(tmp_path, orientation, size, corner):
    path = tmp_path / "x.jpg"
    red_square_jpeg(path, orientation)
    img = load_image(path, TransformSpec())
    assert img.size == size
    w, h = size
    at = {"top_left": (2, 2), "top_right": (w - 3, 2), "bottom_left": (2, h - 3),
          "bottom_right": (w - 3, h - 3)}
    for name, xy in at.items():
        r, g, b = img.getpixel(xy)
        assert (r > 200 and b < 60) if name == corner else (b > 200 and r < 60), (name, r, b)
    # The backbone's input tensor is oriented the same way: red is highest in that quadrant.
    x = preprocess(path, TransformSpec(size=32))[0]
    quads = {"top_left": x[:16, :16], "top_right": x[:16, 16:], "bottom_left": x[16:, :16],
             "bottom_right": x[16:, 16:]}
    assert max(quads, key=lambda k: float(quads[k].mean())) == corner


# ---------------------------------------------------------------- one dataset with all of it
@pytest.fixture(scope="module")
def messy(synth_dir, tmp_path_factory):
    """The synthetic set under a path with a space and non-ASCII letters, with one image of
    each bad kind, one of each convertible kind and an image id with non-ASCII letters."""
    root = tmp_path_factory.mktemp("bad") / "my data" / "Ünïcode"
    shutil.copytree(synth_dir, root)
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    images = index_images(root)
    nv = meta.loc[meta["dx"] == "nv", "image_id"].tolist()
    kinds = sorted(UNREADABLE) + sorted(CONVERTED) + ["exif_rotated"]
    chosen = dict(zip(kinds, nv, strict=False))
    for kind, iid in chosen.items():
        path = images[iid]
        if kind.endswith("png"):
            path.unlink()
            path = path.with_suffix(".png")
        if kind == "exif_rotated":
            red_square_jpeg(path, 6)
        else:
            (UNREADABLE.get(kind) or CONVERTED[kind])[0](path)
    old = nv[len(kinds)]
    images[old].rename(images[old].with_name("ISIC_Ünï 001.jpg"))
    meta.loc[meta["image_id"] == old, "image_id"] = "ISIC_Ünï 001"
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    cache = root / "cäche dir" / "emb ü.h5"
    first = cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    again = cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    return {"root": root, "cache": cache, "chosen": chosen, "n": len(meta), "first": first,
            "again": again}


def test_unreadable_images_are_skipped_listed_and_recorded(messy):
    r, chosen = messy["first"], messy["chosen"]
    assert_ok(r)
    bad = {chosen[k] for k in UNREADABLE}
    assert f"{len(bad)} image(s) could not be read and were skipped:" in r.output
    for kind, (_, reason) in UNREADABLE.items():
        assert f"  {chosen[kind]}: {reason}" in r.output, (kind, r.output)
    c = read_cache(messy["cache"])
    failures = dict(json.loads(c.attrs["failures"]))
    assert set(failures) == bad
    assert len(c.image_ids) == messy["n"] - len(bad) and not bad & set(c.image_ids)
    # Everything else, including the converted and rotated images, was embedded.
    ok = {chosen[k] for k in CONVERTED} | {chosen["exif_rotated"], "ISIC_Ünï 001"}
    assert ok <= set(c.image_ids)


def test_rerun_retries_failures_and_skips_the_rest(messy):
    r, bad = messy["again"], len(UNREADABLE)
    assert_ok(r)
    assert f"(0 new, {messy['n'] - bad} already cached;" in r.output
    assert f"{bad} image(s) could not be read" in r.output


def test_fit_head_leaves_unreadable_images_out_with_a_warning(messy, caplog):
    out = messy["root"] / "runs" / "ré sult"
    with caplog.at_level(logging.WARNING):
        r = cli("fit-head", "--data", messy["root"], "--cache", messy["cache"], "--out", out,
                "--epochs", "5")
    assert_ok(r)
    bad = len(UNREADABLE)
    assert f"{bad} image(s) could not be read at extract time and are left out" in caplog.text
    info = json.loads((out / "metrics.json").read_text())["info"]
    assert sum(info["sizes"].values()) == messy["n"] - bad
    assert (out / "report.md").is_file() and (out / "config.json").is_file()


def test_unseen_sex_and_site_encode_as_zero_with_a_warning(messy, tmp_path, caplog):
    table = load_dataset(messy["root"], "ham10000").table
    aligned, _ = align_embeddings(table, read_cache(messy["cache"]))
    split = assign_split(aligned, "lesion", seed=42)
    lesion = aligned.loc[split == "test", "group_id"].iloc[0]
    rows = table["group_id"] == lesion
    table.loc[rows, "sex"], table.loc[rows, "localization"] = "other", "tail"
    with caplog.at_level(logging.WARNING):
        res = fit_run(table, messy["cache"], tmp_path,
                      RunConfig(seed=42, params=HeadConfig(max_epochs=5, seed=42)))
    assert "never seen in training" in caplog.text
    assert "'other'" in caplog.text and "'tail'" in caplog.text
    config = json.loads((tmp_path / "config.json").read_text())
    assert "other" not in config["encoder"]["categories"]["sex"]
    assert np.isfinite(res.metrics["accuracy"])


def test_a_class_too_small_for_the_split_is_a_one_line_error(messy, tmp_path):
    root = tmp_path / "small"
    shutil.copytree(messy["root"], root, ignore=shutil.ignore_patterns("cäche dir", "runs"))
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    vasc = meta.loc[meta["dx"] == "vasc", "lesion_id"].unique()
    meta = meta[(meta["dx"] != "vasc") | (meta["lesion_id"] == vasc[0])]
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    aligned, _ = align_embeddings(load_dataset(root, "ham10000").table, read_cache(messy["cache"]))
    seed = next(s for s in range(100) if not _trains_on_every_class(aligned, s))
    r = cli("fit-head", "--data", root, "--cache", messy["cache"], "--out", tmp_path / "run",
            "--seed", seed)
    assert_one_line_error(r, "vasc", "no training images")


def _trains_on_every_class(table, seed) -> bool:
    try:
        assign_split(table, "lesion", seed=seed)
        return True
    except ValueError as exc:
        assert "no training images" in str(exc)
        return False


def test_fewer_lesions_than_folds_names_the_class(synth_table):
    table = synth_table.copy()
    df_lesions = table.loc[table["dx"] == "df", "group_id"].unique()
    table = table[(table["dx"] != "df") | table["group_id"].isin(df_lesions[:2])]
    with pytest.raises(ValueError, match=r"df has 2\. Use fewer folds \(at most 2\)"):
        fold_ids(table, 3)
    assert set(fold_ids(table, 2)) == {0, 1}


def test_sets_too_small_for_a_split_say_so():
    tiny = pd.DataFrame({"image_id": [f"ISIC_{i}" for i in range(8)],
                         "group_id": [f"HAM_{i // 2}" for i in range(8)],
                         "dx": ["nv"] * 7 + ["mel"]})
    with pytest.raises(ValueError, match="needs at least 5 lesions, got 4; the data set is too"):
        assign_split(tiny, "lesion")
    with pytest.raises(ValueError, match="at least 2 images per class; mel has 1"):
        assign_split(tiny, "image")


# ---------------------------------------------------------------- metadata tables
@pytest.mark.parametrize("case,header,rows,images,needles", [
    ("missing dx column", "lesion_id,image_id,age", ["HAM_1,ISIC_1,40"], None,
     ["missing required column(s) dx"]),
    ("missing image_id column", "lesion_id,dx,age", ["HAM_1,nv,40"], ["ISIC_1"],
     ["missing required column(s) image_id"]),
    ("duplicate image ids", COLUMNS, [ROWS[0], ROWS[0].replace("HAM_1", "HAM_9")], None,
     ["1 duplicate image id(s)", "ISIC_1"]),
    ("unknown label", COLUMNS, [ROWS[0].replace(",nv,", ",naevus,")], None,
     ["unknown dx label(s) 'naevus'"]),
    ("header only", COLUMNS, [], ["ISIC_1"], ["the table has no rows"]),
    ("listed image missing", COLUMNS, ROWS, ["ISIC_1", "ISIC_2"],
     ["2 listed image(s) not found", "ISIC_3, ISIC_4"]),
])
def test_bad_tables_are_one_line_errors_naming_the_file(tmp_path, case, header, rows, images,
                                                         needles):
    root = make_dir(tmp_path, rows, header=header, images=images)
    assert_one_line_error(cli("data", "check", root), "HAM10000_metadata.csv", *needles)
    r = cli("extract", "--data", root, "--cache", tmp_path / "c.h5", *EXTRACT)
    assert_one_line_error(r, "HAM10000_metadata.csv", *needles)
    assert not (tmp_path / "c.h5").exists()


def test_empty_file_and_no_images_are_one_line_errors(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_bytes(b"")
    assert_one_line_error(cli("data", "check", tmp_path), "no images")
    make_dir(tmp_path, [ROWS[0]])
    (tmp_path / "HAM10000_metadata.csv").write_bytes(b"")
    assert_one_line_error(cli("data", "check", tmp_path), "HAM10000_metadata.csv",
                          "file is empty")


@pytest.mark.parametrize("case,kwargs,rows", [
    ("BOM and CRLF", dict(encoding="utf-8-sig", newline="\r\n"), ROWS),
    ("tab separators in a .csv", dict(sep="\t"), ROWS),
    ("labels in upper case", {}, [r.replace(",nv,", ",NV,").replace(",mel,", ",MEL,")
                                  for r in ROWS]),
    ("extra and reordered columns", dict(header="Notes,Image_ID,dx_type,LESION_ID,dx,dataset,"
                                         "sex,localization,age"),
     ["note a,ISIC_1,histo,HAM_1,nv,vidir,male,back,45", "b,ISIC_2,histo,HAM_1,nv,x,male,back,45",
      "c,ISIC_3,histo,HAM_2,mel,x,female,face,", "d,ISIC_4,histo,HAM_3,bcc,x,unknown,unknown,70"]),
])
def test_table_formats_that_are_read(tmp_path, case, kwargs, rows):
    root = make_dir(tmp_path, rows, **kwargs)
    r = cli("data", "check", "--json", root)
    assert_ok(r)
    s = json.loads(r.output)
    assert s["images"] == 4 and s["lesions"] == 3 and s["missing"]["age"] == 1
    assert {dx: c["images"] for dx, c in s["per_class"].items() if c["images"]} == \
        {"nv": 2, "mel": 1, "bcc": 1}
    assert list(load_dataset(root, "ham10000").table.columns) == [
        "image_id", "group_id", "path", "dx", "label", "age", "sex", "localization"]


def test_bad_ages_and_blank_categories_become_missing(tmp_path, caplog):
    # test_datasets.py covers each kind of bad age in the reader; here, through the CLI.
    rows = ["HAM_1,ISIC_1,nv,histo,forty,,back", "HAM_2,ISIC_2,nv,histo,130,male,",
            "HAM_3,ISIC_3,mel,histo,55, ,back"]
    root = make_dir(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        r = cli("data", "check", "--json", root)
    assert_ok(r)
    s = json.loads(r.output)
    assert (s["missing"]["age"] == 2 and s["missing"]["sex"] == 2
            and s["missing"]["localization"] == 1)
    assert "not a number treated as missing (line 2)" in caplog.text
    assert "outside (0.0, 120.0) treated as missing (line 3)" in caplog.text
