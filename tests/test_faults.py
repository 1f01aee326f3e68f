"""Faults: kill -9 mid-run, a full disk, tampered bundles. Nothing lost, nothing half-written,
nothing unpickled, and a clear error where there must be one."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from PIL import Image
from safetensors.torch import load_file, save_file
from test_bad_input import EXTRACT, assert_ok, assert_one_line_error, cli
from test_datasets import ROWS, make_dir

from skinfeat.data.datasets import CLASSES, index_images, load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.deploy.bundle import (
    BundleError,
    atomic_write,
    load_into,
    load_state,
    load_typed,
    save_bundle,
)
from skinfeat.embed.cache import CacheError, CacheWriter, read_cache
from skinfeat.embed.extract import extract
from skinfeat.embed.weights import WeightSource
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.ensemble import EnsembleConfig
from skinfeat.learn.head import FusionHead, HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.workflows.fit import fit_run

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
RUN_ARTIFACTS = ("splits.csv", "model.safetensors", "config.json", "metrics.json", "report.md",
                 "README.md", "confusion.png", "reliability.png")


def skinfeat_process(*args) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "skinfeat.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, ready, check=lambda: None, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; run ``check()`` at every poll before that."""
    deadline = time.monotonic() + timeout
    while not ready():
        check()
        if proc.poll() is not None:
            pytest.fail("finished before it could be killed:\n" + proc.stdout.read().decode())
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------- kill -9
def copies_of(synth_dir: Path, root: Path, copies: int) -> pd.DataFrame:
    """The synthetic set ``copies`` times under new image and lesion ids: a bigger set, fast."""
    meta = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    images = index_images(synth_dir)
    folder = root / "HAM10000_images_part_1"
    folder.mkdir(parents=True)
    parts = []
    for k in range(copies):
        for iid in meta["image_id"]:
            shutil.copyfile(images[iid], folder / f"{iid}_{k}.jpg")
        parts.append(meta.assign(image_id=meta["image_id"] + f"_{k}",
                                 lesion_id=meta["lesion_id"] + f"_{k}"))
    pd.concat(parts).to_csv(root / "HAM10000_metadata.csv", index=False)
    return load_dataset(root, "ham10000").table


def test_kill_during_extract_resumes_to_the_same_cache(synth_dir, tmp_path):
    root, cache = tmp_path / "data", tmp_path / "c.h5"
    partial = Path(f"{cache}.partial")
    table = copies_of(synth_dir, root, 4)                      # 640 images
    kw = dict(backbone=TINY, weights=WeightSource("random"), precision="fp32", image_size=64,
              num_workers=0)
    extract(table.iloc[:160], cache, **kw)                     # an earlier, complete cache

    verified: set[tuple[int, int]] = set()

    def never_half_written():  # the .h5 either does not exist or reads correctly, at any time
        try:
            st = cache.stat()
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) not in verified:  # read each new version once
            assert len(read_cache(cache).image_ids) >= 160
            verified.add((st.st_ino, st.st_mtime_ns))

    # Killed once the first 256-row chunk of new embeddings is saved (224 images before the end).
    proc = skinfeat_process("extract", "--data", root, "--cache", cache, *EXTRACT,
                            "--batch-size", "16")
    kill_when(proc, lambda: any(partial.glob("chunk_*.npz")), never_half_written)
    assert len(read_cache(cache).image_ids) == 160

    watching, seen = threading.Event(), []

    def watch():
        while not watching.is_set():
            try:
                never_half_written()
            except Exception as exc:  # reported below, in the test's own thread
                seen.append(exc)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    finally:
        watching.set()
        watcher.join()
    assert_ok(r)
    assert not seen, seen
    new, cached = map(int, re.search(r"\((\d+) new, (\d+) already cached", r.output).groups())
    assert cached >= 160 + 256 and new > 0 and new + cached == len(table), r.output
    assert not partial.exists()

    extract(table, tmp_path / "clean.h5", **kw)
    clean, resumed = read_cache(tmp_path / "clean.h5"), read_cache(cache)
    assert resumed.identity == clean.identity
    assert list(resumed.image_ids) == list(clean.image_ids)
    np.testing.assert_allclose(resumed.embeddings, clean.embeddings, rtol=1e-5, atol=1e-5)



MEMBER_DIRS = {"head", "linear", "lgbm"}   # the default ensemble's member folders


def assert_weights_whole(out: Path, names: set) -> None:
    """A bundle whose config.json is written has its weights: model.safetensors, or (the
    default ensemble) each member's folder with its member.json and weights."""
    config = json.loads((out / "config.json").read_text())
    if config["model_type"] != "ensemble":
        assert "model.safetensors" in names
        return
    for kind in config["state"]["members"]:
        inner = {p.name for p in (out / kind).iterdir()}
        assert "member.json" in inner and any(n.startswith("model.") for n in inner), inner


def assert_artifacts_whole(out: Path, n_images: int) -> None:
    """Every artifact present is complete; anything else is a temp file awaiting its rename."""
    names = {p.name for p in out.iterdir()}
    for extra in names - set(RUN_ARTIFACTS):
        if extra.startswith("subgroups_") and extra.endswith(".png"):   # a forest plot per field
            continue                                                    # (written atomically)
        if extra == "fallback" or extra in MEMBER_DIRS:   # the fallback's bundle, members
            continue
        assert extra.startswith(".") or extra.endswith(".tmp"), extra
    if "fallback" in names:   # written before the model's config.json, config last
        inner = {p.name for p in (out / "fallback").iterdir()}
        assert all(n in ("model.safetensors", "config.json") or n in MEMBER_DIRS
                   or n.startswith(".") or n.endswith(".tmp") for n in inner), inner
        if "config.json" in inner:
            load_typed(out / "fallback")
            assert_weights_whole(out / "fallback", inner)
    if "config.json" in names and load_typed(out)[0].get("fallback"):
        assert (out / "fallback" / "config.json").is_file()
    if "splits.csv" in names:
        assert len(pd.read_csv(out / "splits.csv")) == n_images
    if "config.json" in names:  # written last of the bundle: the weights must be there
        load_typed(out)
        assert_weights_whole(out, names)
    if "model.safetensors" in names:
        assert load_state(out)
    if "metrics.json" in names:
        assert "model" in json.loads((out / "metrics.json").read_text())
    for name, last in (("report.md", "## Reference recipe"), ("README.md", "## Known limits")):
        if name in names:
            text = (out / name).read_text()
            assert last in text and text.endswith("\n"), name
    for name in ("confusion.png", "reliability.png"):
        if name in names:
            with Image.open(out / name) as img:
                img.load()


def test_kill_during_fit_head_leaves_no_half_written_artifact(synth_dir, synth_cache,
                                                               synth_table, tmp_path):
    out = tmp_path / "run"
    proc = skinfeat_process("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", out)
    # Killed while the bundle and the report are being written (the default model's first
    # weights: its fallback's head member, fallback/head/model.safetensors).
    kill_when(proc, lambda: out.is_dir() and any(out.rglob("model.safetensors")),
              lambda: out.is_dir() and assert_artifacts_whole(out, len(synth_table)))
    assert_artifacts_whole(out, len(synth_table))
    r = cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", out, "--epochs", "5")
    assert_ok(r)
    assert_artifacts_whole(out, len(synth_table))
    names = {p.name for p in out.iterdir()}
    assert set(RUN_ARTIFACTS) - {"model.safetensors"} <= names and {"head", "linear"} <= names


@pytest.mark.parametrize("model", ["head", "lgbm", "ensemble"])
def test_every_run_artifact_arrives_by_atomic_rename(synth_table, synth_cache, tmp_path,
                                                     monkeypatch, model):
    renamed: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst, **kw):
        renamed.append(Path(dst).name)
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", recording_replace)
    # One LightGBM thread: on a busy 2-core machine its spinning OpenMP threads crawl.
    params = {"head": HeadConfig(max_epochs=3), "lgbm": LGBMConfig(num_threads=1),
              "ensemble": EnsembleConfig(settings={"max_epochs": 3})}[model]
    fit_run(synth_table, synth_cache, tmp_path, RunConfig(model=model, params=params),
            calibrate=False)
    written = {p.name for p in tmp_path.iterdir()}
    members = {"head", "linear"} if model == "ensemble" else set()   # a folder each
    expected = set(RUN_ARTIFACTS) - ({"model.safetensors"} if model != "head" else set()) \
        | ({"model.lgbm.txt"} if model == "lgbm" else {"fallback"}) | members
    plots = {n for n in written if n.startswith("subgroups_") and n.endswith(".png")}
    assert written - plots == expected and plots   # + a subgroup forest plot per field
    if model != "lgbm":   # folders: their files arrive by rename, like the others
        inner = {p.name for p in (tmp_path / "fallback").iterdir()}
        assert inner == {"config.json"} | (members or {"model.safetensors"})
        for folder in [tmp_path / m for m in members] + [tmp_path / "fallback" / m
                                                         for m in members]:
            files = {p.name for p in folder.iterdir()}
            assert files == {"member.json", "model.safetensors"} and files <= set(renamed)
        assert inner - members <= set(renamed)
        written -= {"fallback"} | members
    assert written <= set(renamed)  # nothing reached its final name except by a rename


# ---------------------------------------------------------------- full disk
def small_cache(path: Path, ids: list[str]) -> None:
    with CacheWriter(path, {"backbone": "x"}) as w:
        w.add(ids, np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3))
        w.finalize()


def disk_full_for_hdf5_writes(monkeypatch) -> None:
    """h5py can still read, but creating a file fails as on a full disk."""
    real_file = h5py.File

    def full(name, mode="r", *args, **kwargs):
        if mode != "r":
            raise ENOSPC
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", full)


@pytest.mark.parametrize("where", ["h5py.File", "os.replace"])
def test_disk_full_keeps_the_previous_cache_and_the_chunks(tmp_path, monkeypatch, where):
    path = tmp_path / "c.h5"
    small_cache(path, ["a", "b"])
    before = read_cache(path)
    with CacheWriter(path, {"backbone": "x"}) as w:
        w.add(["c"], np.ones((1, 3), np.float32))
        w.flush()
        if where == "h5py.File":
            disk_full_for_hdf5_writes(monkeypatch)
        else:
            def full(src, dst, **kw):
                raise ENOSPC
            monkeypatch.setattr(os, "replace", full)
        with pytest.raises(CacheError, match=r"disk full.*previous cache is left intact") as info:
            w.finalize()
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    after = read_cache(path)
    assert list(after.image_ids) == list(before.image_ids)
    np.testing.assert_array_equal(after.embeddings, before.embeddings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.lock", "c.h5.partial"]
    with CacheWriter(path, {"backbone": "x"}) as w:  # space freed: the rerun picks up the chunk
        assert w.done == {"a", "b", "c"}
        assert list(w.finalize().image_ids) == ["a", "b", "c"]


def test_disk_full_while_saving_a_chunk_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"

    def full(*args, **kwargs):
        raise ENOSPC

    with (pytest.raises(CacheError, match=r"disk full.*chunks saved so far are kept"),
          CacheWriter(path, {"backbone": "x"}, chunk_size=2) as w):
        w.add(["a", "b"], np.ones((2, 3), np.float32))
        monkeypatch.setattr(np, "savez", full)
        w.add(["c", "d"], np.ones((2, 3), np.float32))
    monkeypatch.undo()
    partial = Path(f"{path}.partial")
    assert sorted(p.name for p in partial.iterdir()) == ["chunk_000000.npz", "identity.json"]
    with CacheWriter(path, {"backbone": "x"}) as w:
        assert w.done == {"a", "b"}


def test_disk_full_during_extract_is_one_line_and_resumable(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    root = make_dir(tmp_path / "data", ROWS)
    cache = tmp_path / "c.h5"
    assert_ok(cli("extract", "--data", root, "--cache", cache, *EXTRACT))
    before = read_cache(cache)
    rows = ROWS + ["HAM_4,ISIC_5,df,histo,30.0,male,back"]
    root = make_dir(tmp_path / "data", rows)
    disk_full_for_hdf5_writes(monkeypatch)
    r = cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    assert_one_line_error(r, str(cache), "disk full", "left intact")
    monkeypatch.undo()
    np.testing.assert_array_equal(read_cache(cache).embeddings, before.embeddings)
    r = cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    assert_ok(r)
    assert "(0 new, 5 already cached;" in r.output  # the chunk written before the failure


def test_disk_full_while_writing_a_run_artifact(synth_dir, synth_cache, tmp_path, monkeypatch):
    real_replace = os.replace

    def full_for_metrics(src, dst, **kw):
        if Path(dst).name == "metrics.json":
            raise ENOSPC
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", full_for_metrics)
    r = cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path,
            "--epochs", "2")
    assert_one_line_error(r, "metrics.json", "disk full")
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old\n")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text("half a rep")
        raise ENOSPC

    with pytest.raises(BundleError, match=r"report\.md: could not write \(disk full\)"):
        atomic_write(target, half_then_full)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


# ---------------------------------------------------------------- tampered bundles
def small_bundle(out: Path, meta_dim: int = 5, head: str = "reference") -> dict:
    encoder = MetadataEncoder(encoding="reference").fit(pd.DataFrame({
        "age": [40.0, 60.0], "sex": ["female", "male"], "localization": ["back", "face"]}))
    config = {"model_type": "head", "classes": list(CLASSES), "encoder": encoder.to_dict(),
              "backbone": {"backbone": TINY},
              "head": {"head": head, "inputs": "fused", "embed_dim": 64, "meta_dim": meta_dim,
                       "n_classes": len(CLASSES)}}
    torch.manual_seed(0)
    save_bundle(out, config, state=FusionHead(64, meta_dim, len(CLASSES), head).state_dict())
    return config


def head_from(config: dict) -> FusionHead:
    h = config["head"]
    return FusionHead(h["embed_dim"], h["meta_dim"], h["n_classes"], h["head"], h["inputs"])


def test_an_intact_bundle_round_trips(tmp_path):
    small_bundle(tmp_path)
    config = load_typed(tmp_path)[0]
    model = head_from(config)
    load_into(model, load_state(tmp_path), tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert MetadataEncoder.from_dict(config["encoder"]).n_features == 3


@pytest.mark.parametrize("edit,pattern", [
    (lambda c: c["head"].update(meta_dim=6), r"shape mismatch \['meta_mlp\.fc1\.weight \(32, 5\) "
                                             r"vs config \(32, 6\)'"),
    (lambda c: c["head"].update(embed_dim=32), r"fuse\.fc\.weight"),
    (lambda c: c["head"].update(head="film"), r"missing \['film\.bias', 'film\.weight'\]"),
    (lambda c: c["head"].update(inputs="image"), r"unexpected \['meta_mlp"),
])
def test_an_edited_config_no_longer_matches_its_weights(tmp_path, edit, pattern):
    config = small_bundle(tmp_path)
    edit(config)
    with pytest.raises(BundleError, match=pattern) as info:
        load_into(head_from(config), load_state(tmp_path), tmp_path)
    assert "weights do not match config.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("tamper,pattern", [
    (lambda s: s.pop("classifier.bias"), r"missing \['classifier\.bias'\]"),
    (lambda s: s.update(extra=torch.zeros(2)), r"unexpected \['extra'\]"),
    (lambda s: s.update({"classifier.weight": torch.zeros(8, 64)}), r"shape mismatch"),
    (lambda s: s["classifier.bias"].fill_(float("nan")), r"NaN or inf \(classifier\.bias\)"),
])
def test_tampered_weights_are_refused(tmp_path, tamper, pattern):
    config = small_bundle(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    tamper(state)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(BundleError, match=pattern):
        load_into(head_from(config), load_state(tmp_path), tmp_path)


class WouldRunCode:
    """Unpickling this creates a file: proof that something ran code from the bundle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickle", "torch.save"])
def test_unreadable_weights_are_refused_without_unpickling(tmp_path, content):
    small_bundle(tmp_path)
    weights, marker = tmp_path / "model.safetensors", tmp_path / "pwned"
    if content == "garbage":
        weights.write_bytes(b"\x00not safetensors at all")
    elif content == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif content == "pickle":
        weights.write_bytes(pickle.dumps(WouldRunCode(marker)))
    else:
        torch.save({"classifier.bias": WouldRunCode(marker)}, weights)
    with pytest.raises(BundleError, match="unreadable weights"):
        load_state(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("text,pattern", [
    ('{"format": "skinfeat-bundle/1", "classes"', "not valid JSON"),
    ('"skinfeat-bundle/1 model_type classes encoder backbone head"', "not a bundle config"),
    ("[1, 2]", "not a bundle config"),
    ('{"format": "skinfeat-bundle/1", "model_type": "head"}',
     "missing key.*classes, encoder, backbone, head"),
])
def test_a_broken_config_is_a_clear_error(tmp_path, text, pattern):
    small_bundle(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(BundleError, match=pattern) as info:
        load_typed(tmp_path)
    assert "config.json" in str(info.value)


def test_other_format_and_missing_files_are_clear_errors(tmp_path):
    small_bundle(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format": "other/9"}))
    with pytest.raises(BundleError, match="unsupported bundle format 'other/9'"):
        load_typed(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="weights file missing"):
        load_state(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(BundleError, match="no trained model here"):
        load_typed(tmp_path)


def test_nothing_in_the_package_unpickles():
    """Saved state is loaded with safetensors, JSON, LightGBM text or weights_only torch.load."""
    package = Path(__file__).resolve().parents[1] / "skinfeat"
    for path in sorted(package.glob("*.py")):
        source = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, (path.name, call)
        for call in re.findall(r"np\.load\([^)]*\)", source):
            assert "allow_pickle=False" in call, (path.name, call)
        for word in (r"\bimport pickle\b", r"\bpickle\.loads?\(", r"\bjoblib\b", r"\bdill\b",
                     r"\bcloudpickle\b", r"allow_pickle=True", r"weights_only=False"):
            assert not re.search(word, source), (path.name, word)
