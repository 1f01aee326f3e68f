"""benchmarks/stage_two.py's table: each step's --before figures land in that step's row (the
one-worker tune and the --tune-trials search are different rows), ratios are this tree over
--before's, and tune is also given as seconds per epoch by trial kind."""
import importlib.util
import re
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_stage_two",
                                                  ROOT / "benchmarks/stage_two.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(seconds: float, cpu: float, trials=None) -> dict:
    return {"seconds": seconds, "child_cpu": cpu, "load": 0.5, "pss_gb": 1.0, "largest_gb": 0.5,
            "mode": "batched", "best": 0.3, "held_out": 0.3, "trials": trials or []}


def _trial(head: str, epochs: int, seconds: float) -> dict:
    return {"head": head, "fold_epochs": epochs, "seconds": seconds}


def test_before_tune_figures_land_in_their_own_rows(tmp_path, capsys):
    bench = _bench()
    this = bench.Tree("this tree", ROOT, tmp_path)
    before = bench.Tree("--before old", ROOT, tmp_path)
    this.runs = {"fit-head": [_run(4.0, 4.0), _run(6.0, 5.0)], "cv-head": [_run(14.0, 25.0)],
                 "tune-10-1-1": [_run(60.0, 59.0, [_trial("film", 100, 50.0)])],
                 "tune-50-2-1": [_run(400.0, 700.0, [_trial("film", 400, 200.0),
                                                     _trial("reference", 100, 30.0)])]}
    before.runs = {"fit-head": [_run(4.0, 4.0)], "cv-head": [_run(14.0, 20.0)],
                   "tune-10-1-1": [_run(66.0, 60.0, [_trial("film", 100, 55.0)])],
                   "tune-50-2-1": [_run(210.0, 300.0, [_trial("film", 200, 100.0)])]}
    args = Namespace(sequential_tune_trials=10, tune_trials=50)
    bench.report(this, before, args, jobs=2)
    out = capsys.readouterr().out
    rows = {line[:46].strip(): line[46:] for line in out.splitlines()}
    numbers = {k: re.findall(r"\d+\.\d+", v) for k, v in rows.items()}
    # value, before, ratio this / before, CPU, CPU before, ratio
    assert numbers["fit-head (reference head, bundle + report)"][:6] == \
        ["5.0", "4.0", "1.25", "4.5", "4.0", "1.12"]
    assert numbers["tune --trials 10 --jobs 1, batched heads"][:3] == ["60.0", "66.0", "0.91"]
    assert numbers["tune --trials 50 (--jobs 2)"][:3] == ["400.0", "210.0", "1.90"]
    # per kind: 200 s / 400 epochs here, 100 s / 200 epochs before: the same cost per epoch
    film = next(line for line in out.split("tune --trials 50 (--jobs 2): seconds")[1].splitlines()
                if line.strip().startswith("film"))
    assert "0.500 s" in film and film.rstrip().endswith("x 1.00")
