"""What the default model costs: ``skinfeat fit-head`` with the default (the fusion head + linear
probe ensemble, issue 29) against ``--model head`` (the default before it), on HAM10000's real
MobileNetV2 embeddings of all 10,015 images.

    PYTHONPATH=. .venv/bin/python benchmarks/default_model.py [--data ../shared/data]
        [--repeat 2] [--inputs fused] [--extra "--subgroups none"]

Each fit is a fresh ``skinfeat fit-head`` process (imports, reading the cache, the lesion-grouped
split, training, calibration, the bundle and the report), run in ABBA order ``--repeat`` times so
that a drift in the machine's load falls on both. Prints the CPU's lscpu flags, the load average
around each run, each run's wall and CPU seconds (the child's user + system), its peak resident
memory and its test balanced accuracy, then the medians and the default / head ratios measured
in this run. No target: the ensemble trains the head and the probe (with its inner search for
C), so it costs more than the head by design; this says how much.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"default": [], "head": ["--model", "head"]}


def fit(name: str, data: Path, out: Path, inputs: str, extra: list[str]) -> dict:
    """One ``skinfeat fit-head`` in a fresh process; its wall, CPU, peak memory and score."""
    cmd = [sys.executable, "-c", "from skinfeat.cli import main; main()", "fit-head",
           "--data", str(data / "ham10000-full"),
           "--cache", str(data / "ham10000-mobilenetv2-embeddings.h5"),
           "--out", str(out), "--inputs", inputs, *MODELS[name], *extra]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"{name}: fit-head failed (exit {proc.returncode}):\n"
                             f"{log.read()[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    bacc = metrics["model"]["balanced_accuracy"]
    config = json.loads((out / "config.json").read_text())
    row = {"model": name, "model_type": config["model_type"], "wall_s": wall,
           "cpu_s": usage.ru_utime + usage.ru_stime, "peak_gb": usage.ru_maxrss / 2**20,
           "balanced_accuracy": bacc,
           "load_before": load, "load_after": os.getloadavg()[0]}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--repeat", type=int, default=2, help="ABBA rounds")
    ap.add_argument("--inputs", default="fused", choices=("fused", "image", "meta"))
    ap.add_argument("--extra", default="", help="more fit-head flags, one string")
    args = ap.parse_args()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in flags.splitlines()
                    if line.startswith(("Model name", "CPU(s)", "Flags"))))
    print(f"load {os.getloadavg()}; inputs {args.inputs}; {args.repeat} ABBA round(s)")
    rows: dict[str, list[dict]] = {name: [] for name in MODELS}
    with tempfile.TemporaryDirectory(prefix="default_model_") as tmp:
        for r in range(args.repeat):
            order = ("default", "head", "head", "default") if r % 2 == 0 else \
                ("head", "default", "default", "head")
            for i, name in enumerate(order):
                out = Path(tmp) / f"{name}-{r}-{i}"
                rows[name].append(fit(name, args.data, out, args.inputs,
                                      shlex.split(args.extra)))
    med = {name: {k: statistics.median(x[k] for x in rs)
                  for k in ("wall_s", "cpu_s", "peak_gb")} for name, rs in rows.items()}
    for name, m in med.items():
        scores = sorted({round(x["balanced_accuracy"], 4) for x in rows[name]})
        print(f"{name:8s} ({rows[name][0]['model_type']}): median {m['wall_s']:.1f} s wall, "
              f"{m['cpu_s']:.1f} s CPU, peak {m['peak_gb']:.2f} GB; test balanced accuracy "
              f"{scores} over {len(rows[name])} runs")
    d, h = med["default"], med["head"]
    print(f"default / head: x{d['wall_s'] / h['wall_s']:.2f} wall, "
          f"x{d['cpu_s'] / h['cpu_s']:.2f} CPU, x{d['peak_gb'] / h['peak_gb']:.2f} peak memory "
          f"(medians of the same run); load now {os.getloadavg()}")


if __name__ == "__main__":
    main()
