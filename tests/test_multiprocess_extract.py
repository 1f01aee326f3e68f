"""Stage one on several processes, the README's recipe: ``torchrun --nproc_per_node 2 -m
skinfeat.cli extract`` on 2 CPU processes (each rank embeds its shard of the sorted image ids
into its own file), then ``cache merge``: the merged cache equals one process's cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXTRACT_TINY as EXTRACT
from conftest import run_cli as cli

from skinfeat.data.datasets import load_dataset
from skinfeat.data.synthetic import make_synthetic
from skinfeat.embed.cache import read_cache

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def isic24(tmp_path_factory) -> Path:
    return make_synthetic("isic2024", tmp_path_factory.mktemp("isic2024"), n_images=20, seed=5)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m skinfeat.cli ARGS`` on this checkout (its
    rendezvous is on the loopback interface only)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                    "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "skinfeat.cli", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_two_processes_then_merge_equal_one_process(isic24, tmp_path):
    cli("extract", "--data", isic24, "--cache", tmp_path / "one.h5", *EXTRACT)
    r = torchrun("extract", "--data", str(isic24), "--cache", str(tmp_path / "mp.h5"), *EXTRACT,
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    shards = [tmp_path / f"mp.shard{i}of2.h5" for i in range(2)]
    parts = [read_cache(p) for p in shards]
    # Each rank embedded its own half: disjoint, together every image, both non-empty.
    ids = [set(p.image_ids) for p in parts]
    assert all(ids) and not ids[0] & ids[1]
    assert [p.identity["shard"] for p in parts] == ["0/2", "1/2"]
    cli("cache", "merge", *shards, "--out", tmp_path / "merged.h5")
    merged, one = read_cache(tmp_path / "merged.h5"), read_cache(tmp_path / "one.h5")
    assert ids[0] | ids[1] == set(one.image_ids) == set(load_dataset(isic24).table["image_id"])
    assert list(merged.image_ids) == list(one.image_ids)
    # Other batch compositions round differently in the last bits (README "Determinism").
    np.testing.assert_allclose(merged.embeddings, one.embeddings, rtol=1e-5, atol=1e-6)
    assert merged.identity == {k: v for k, v in one.identity.items() if k != "shard"}
