"""Stage one under torchrun on a node with several GPUs: each rank embeds on its own GPU
(LOCAL_RANK), and its shard comes from RANK / WORLD_SIZE."""
from __future__ import annotations

import torch

from skinfeat.commands.stage_one import parse_shard, rank_device


def test_each_torchrun_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "8")        # two nodes of four GPUs
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert parse_shard(None) == (6, 8)
    assert rank_device("auto", "auto") == "cuda:2" and rank_device("cuda", "bf16") == "cuda:2"
    assert rank_device("cpu", "auto") == "cpu"          # an explicit choice stays
    assert rank_device("auto", "int8") == "auto"        # int8 runs on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", "auto") == "auto"        # a CPU-only node: CPU ranks


def test_without_torchrun_the_device_is_as_given(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rank_device("auto", "auto") == "auto" and rank_device("cuda", "auto") == "cuda"
