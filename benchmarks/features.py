"""Issue 29's results ladder on real features, from ``../shared/data``: stage-one options with the
real MobileNetV2 weights, then stage two on each, lesion-grouped CV with paired intervals.

    PYTHONPATH=. .venv/bin/python benchmarks/features.py [--data ../shared/data]
        [--work /tmp/feat29] [--images full|sample] [--options default,last3,views]
        [--models head,linear] [--folds 5] [--seeds 0,1,2] [--steps extract,ladder,compare]

Steps (each prints the exact ``skinfeat`` command it runs, its wall and CPU seconds and the load):

* ``pass``: the pooling, layer and view-average options of ``--options`` from one pass of the
  encoder per view (``features_pass.py``), into ``WORK/IMAGES-OPTION.h5``, with the identities
  ``skinfeat extract`` gives them (on a shared 2-core machine a full-set extract takes tens of
  minutes per option);
* ``verify``: each option through ``skinfeat.extract`` on ``--verify-images`` images in one run:
  seconds, the ratio to the default's, the cosine to the pass's rows and the identity check;
* ``extract``: stage one once per option with ``skinfeat extract`` (the options the pass does
  not cover, e.g. ``size288``; an existing cache is resumed, i.e. kept);
* ``ladder``: majority class; the reference recipe on the leaky image-level folds; the reference
  architecture and encoder on lesion-grouped folds; the default head (image, fused); the linear
  probe (image), all on the ``default`` cache; then cv's default model, the head + linear probe
  ensemble, on the ``last3`` cache (one view) and on the ``views`` cache (today's default
  extraction: ``last3``, the image's flip and quarter turns averaged), image and fused; ``skinfeat
  cv``, mean ± sd over seeds, and the probe paired with the head (the ladder needs the
  ``default``, ``last3`` and ``views`` caches);
* ``compare``: ``skinfeat compare`` of every option cache x model (``--models``; an ensemble's
  ``--members`` and ``--combine``) against the first entry (the first option's cache, the
  first model), for each of ``--inputs``: paired differences with 95 % intervals from a lesion
  bootstrap of the pooled out-of-fold predictions, into ``WORK/compare-INPUTS[-TAG]``;
* ``head``: the default head against ``HEAD_BEFORE`` (its defaults before issue 29) on the first
  option's cache, two ``skinfeat cv`` runs on the same folds, paired as ``compare`` pairs
  (``compare`` shares one recipe between its entries).

``head`` and ``ladder`` reuse a cv run of the default head that ``compare`` already wrote (same
folds, seeds and recipe). The ``default`` option is extract's default before issue 29 (``--layers
last``, one view): today's default for timm encoders is ``views`` (docs/features.md).

MobileNetV2 stands in for ConvNeXt-Tiny, which cannot be downloaded here: one encoder's result.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SKINFEAT = [sys.executable, "-m", "skinfeat.cli"]

# option -> extract flags; "default" is extract's default before issue 29 (avg, --layers last,
# one view), the reference every option is paired against; "views" is today's default for timm
# encoders (--layers last3, --average-views all), "last3" the same with one view
ONE_VIEW = ["--average-views", "none"]
OPTIONS = {
    "default": ["--layers", "last", *ONE_VIEW],
    "gem": ["--pool", "gem", *ONE_VIEW],
    "avgmax": ["--pool", "avgmax", *ONE_VIEW],
    "last2": ["--layers", "last2", *ONE_VIEW],
    "last3": ["--layers", "last3", *ONE_VIEW],
    "flip": ["--average-views", "flip"],
    "rot90": ["--average-views", "rot90"],
    "views": ["--layers", "last3", "--average-views", "all"],
    "size288": ["--size", "288", *ONE_VIEW],
}


def cpu_lines() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if line.startswith(("Model name", "CPU(s)", "Flags")))


def load() -> str:
    return "load " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def run(args: list[str], quiet: bool = False) -> tuple[float, float, str]:
    """``skinfeat ARGS`` in a child process: its wall and CPU seconds (user + system) and its
    standard output."""
    print("$ skinfeat " + " ".join(args), f"  [{load()}]", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(SKINFEAT + args, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if not quiet:
        print(proc.stdout.rstrip())
    print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU  [{load()}]", flush=True)
    return wall, cpu, proc.stdout


def data_args(args) -> list[str]:
    if args.images == "full":
        return ["--data", str(args.data / "ham10000-full")]
    return ["--data", str(args.data / "ham10000-sample")]


def cache_path(args, option: str) -> Path:
    return args.work / f"{args.images}-{option}.h5"


def extract_step(args) -> None:
    times = {}
    for option in args.options:
        path = cache_path(args, option)
        wall, cpu, _ = run(["extract", *data_args(args), "--backbone",
                            f"local-dir:{args.data / 'mobilenetv2_100.coral_in1k'}",
                            "--cache", str(path), *OPTIONS[option]])
        times[option] = (wall, cpu)
    base = times.get("default")
    print("\nstage one, per option (ratios to the default in this run; a resumed cache "
          "costs only its load):")
    for option, (wall, cpu) in times.items():
        ratio = f"  x{cpu / base[1]:.2f} CPU" if base and base[1] > 0 else ""
        print(f"  {option:10} {wall:8.1f} s wall {cpu:8.1f} s CPU{ratio}")


def cv_args(args, out: str, extra: list[str], option: str = "default") -> list[str]:
    return ["cv", *data_args(args), "--cache", str(cache_path(args, option)),
            "--folds", str(args.folds),
            "--seeds", args.seeds, "--jobs", str(args.jobs), "--out", str(args.work / out),
            *extra]


LADDER = [
    ("reference recipe, leaky (image-level folds)", "ladder-leaky",
     ["--models", "head", "--inputs", "fused", "--split", "image", "--encoding", "reference",
      "--calibration", "temperature"]),
    ("reference architecture + encoder, honest", "ladder-reference",
     ["--models", "head", "--inputs", "fused", "--encoding", "reference"]),
    ("default head", "ladder-head-image", ["--models", "head", "--inputs", "image"]),
    ("default head", "ladder-head-fused", ["--models", "head", "--inputs", "fused"]),
    # image only: its fused row costs as much again (~40 CPU s per fold on 2 busy cores)
    ("linear probe", "ladder-linear", ["--models", "linear", "--inputs", "image"]),
    # cv's default model (head + linear) on one view of --layers last3
    ("head + linear, last3, one view", "ladder-ensemble-image",
     ["--models", "ensemble", "--inputs", "image"], "last3"),
    ("head + linear, last3, one view", "ladder-ensemble-fused",
     ["--models", "ensemble", "--inputs", "fused"], "last3"),
    # today's default: extract's default cache (last3, five views averaged), cv's default model
    ("the default (last3, views averaged)", "ladder-default-image",
     ["--models", "ensemble", "--inputs", "image"], "views"),
    ("the default (last3, views averaged)", "ladder-default-fused",
     ["--models", "ensemble", "--inputs", "fused"], "views"),
]


def ladder_step(args) -> None:
    rows, heads = [], {}
    for title, out, extra, *option in LADDER:
        where = args.work / out
        if out.startswith("ladder-head-"):
            inputs = out.rsplit("-", 1)[1]
            where = heads[inputs] = default_head_run(args, "default", inputs) or where
        if where == args.work / out:
            run(cv_args(args, out, extra, *option), quiet=True)
        metrics = json.loads((where / "cv_metrics.json").read_text())
        if not rows:
            base = metrics["majority_baseline"]["balanced_accuracy"]
            rows.append(("majority class", "-", base["mean"], 0.0, base["std"]))
        for model, by_inputs in metrics["summary"].items():
            for inputs, summary in by_inputs.items():
                seeds = summary["seed_spread"]["balanced_accuracy"]
                folds = summary["balanced_accuracy"]["std"]
                rows.append((f"{title}: {model}", inputs, seeds["mean"], seeds["std"], folds))
    print("\nladder (balanced accuracy, mean ± sd over seeds; sd over all folds):")
    for title, inputs, mean, sd, fold_sd in rows:
        print(f"  {title:58} {inputs:6} {100 * mean:5.1f} ± {100 * sd:.1f} %  "
              f"(folds: {100 * fold_sd:.1f})")
    for inputs, head in heads.items():
        if inputs != "image":
            continue
        print(f"linear probe - default head, {inputs}: "
              f"{pair(head, args.work / 'ladder-linear', 'head', inputs, model_b='linear')}",
              flush=True)


def compare_step(args) -> None:
    caches = [str(cache_path(args, o)) for o in args.options]
    ensemble = (["--members", args.members, "--combine", args.combine]
                if "ensemble" in args.models.split(",") else [])
    tag = f"-{args.tag}" if args.tag else ""
    for inputs in args.inputs:
        cache_flags = [flag for c in caches for flag in ("--cache", c)]
        run(["compare", *data_args(args), *cache_flags, "--models", args.models, "--inputs", inputs,
             "--folds", str(args.folds), "--seeds", args.seeds, "--jobs", str(args.jobs),
             *ensemble, "--out", str(args.work / f"compare-{inputs}{tag}")])


# the head's training defaults before issue 29 (its candidate, 3e-4 / 80 / 10, is today's default)
HEAD_BEFORE = ["--lr", "1e-3", "--max-epochs", "40", "--patience", "5"]


def pair(run_a: Path, run_b: Path, model: str, inputs: str, n_boot: int = 2000,
         model_b: str | None = None) -> str:
    """``b - a`` balanced accuracy of two cv runs on the same folds (``model`` in ``run_a``,
    ``model_b``, default the same, in ``run_b``), with compare's statistics (a lesion bootstrap
    of the pooled out-of-fold predictions, mean over seeds)."""
    import numpy as np
    import pandas as pd

    from skinfeat.evaluate.compare_stats import paired_difference
    from skinfeat.workflows.compare import _arrays, _read_oof, _same_folds

    _same_folds({"a": run_a, "b": run_b})
    metrics = json.loads((run_a / "cv_metrics.json").read_text())
    classes, seeds = metrics["classes"], metrics["config"]["seeds"]
    truth = pd.read_csv(run_a / "cv_folds.csv", dtype={"image_id": str, "group_id": str}) \
        .drop_duplicates("image_id").set_index("image_id").sort_index()
    y = truth["dx"].map({c: k for k, c in enumerate(classes)}).to_numpy(np.int64)
    a, b = (_arrays(_read_oof(r / "oof_predictions.csv"), {"model": m, "inputs": inputs, "run": r},
                    classes, truth.index, seeds)
            for r, m in ((run_a, model), (run_b, model_b or model)))
    d = paired_difference("balanced_accuracy", y, truth["group_id"].to_numpy(), a, b,
                          n_boot=n_boot)
    return (f"{100 * d.estimate:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] pts, "
            f"p={d.p_value:.4f}")


def default_head_run(args, option: str, inputs: str) -> Path | None:
    """A cv run of today's default head on ``option``'s cache, these inputs, folds and seeds,
    that the compare step already wrote (its per-cache run), or None: the head step and the
    ladder reuse it rather than fit the same heads again."""
    from dataclasses import asdict

    from skinfeat.learn.head import HeadConfig

    default = {k: v for k, v in asdict(HeadConfig()).items() if k not in ("inputs", "seed")}
    seeds = [int(s) for s in args.seeds.split(",")]
    for path in sorted(args.work.glob(f"compare-{inputs}*/cv/{args.images}-{option}")):
        try:
            metrics = json.loads((path / "cv_metrics.json").read_text())
        except FileNotFoundError:
            continue
        cfg = metrics["config"]
        recipe = cfg.get("recipe", {})
        head = {k: v for k, v in recipe.get("head", {}).items() if k not in ("inputs", "seed")}
        if (cfg["folds"] == args.folds and cfg["seeds"] == seeds and cfg["split"] == "group"
                and inputs in cfg["inputs"] and "head" in cfg["models"] and head == default
                and recipe.get("encoding") == "robust"
                and recipe.get("calibration") == "logit_adjust"
                and not recipe.get("tta") and not recipe.get("group_context")
                and recipe.get("fallback")):
            print(f"reusing the default head of {path}", flush=True)
            return path
    return None


def head_step(args) -> None:
    option = args.options[0]
    for inputs in args.inputs:
        runs = []
        for name, extra in (("before", HEAD_BEFORE), ("default", [])):
            out = f"head-{option}-{inputs}-{name}"
            done = default_head_run(args, option, inputs) if name == "default" else None
            if done is None:
                run(["cv", *data_args(args), "--cache", str(cache_path(args, option)),
                     "--folds", str(args.folds), "--seeds", args.seeds,
                     "--jobs", str(args.jobs), "--models", "head", "--inputs", inputs,
                     "--out", str(args.work / out), *extra], quiet=True)
            runs.append(done or args.work / out)
        print(f"default head - head {' '.join(HEAD_BEFORE)}, {inputs}: "
              f"{pair(runs[0], runs[1], 'head', inputs)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/feat29"))
    ap.add_argument("--images", choices=("full", "sample"), default="full")
    ap.add_argument("--options", default="default,last3,views",
                    help=f"comma list of {', '.join(OPTIONS)} (the first is the reference)")
    ap.add_argument("--models", default="head,linear,ensemble",
                    help="compare's models (ensemble: --model ensemble, with --members, --combine)")
    ap.add_argument("--members", default="head,linear",
                    help="compare, --models ensemble: its members")
    ap.add_argument("--combine", choices=("logmean", "stack"), default="logmean",
                    help="compare, --models ensemble: how the members are combined")
    ap.add_argument("--inputs", default="image,fused",
                    help="compare and head: the input sets, one run each")
    ap.add_argument("--tag", default="",
                    help="compare: its runs go to WORK/compare-INPUTS-TAG (default: no tag)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--steps", default="pass,verify,ladder,compare")
    ap.add_argument("--verify-images", type=int, default=64)
    args = ap.parse_args()
    args.options = [o for o in args.options.split(",") if o]
    args.inputs = [i for i in args.inputs.split(",") if i]
    unknown = sorted(set(args.options) - set(OPTIONS))
    if unknown:
        ap.error(f"unknown option(s) {unknown}; choose from {', '.join(OPTIONS)}")
    if not (args.data / "ham10000-full").is_dir():
        sys.exit(f"{args.data}: no ham10000-full/ here (pass --data)")
    args.work.mkdir(parents=True, exist_ok=True)
    print(cpu_lines())
    print(f"{load()}; cores {os.cpu_count()}; work {args.work}")
    steps = set(args.steps.split(","))
    table = None
    if steps & {"pass", "verify"}:
        from features_pass import IN_PASS, shared_pass, verify

        from skinfeat.data.datasets import load_dataset
        table = load_dataset(data_args(args)[1]).table
        backbone = f"local-dir:{args.data / 'mobilenetv2_100.coral_in1k'}"
        paths = {o: cache_path(args, o) for o in args.options if o in IN_PASS}
    if "pass" in steps:
        print(f"\none pass for {', '.join(paths)}  [{load()}]", flush=True)
        took = shared_pass(table, backbone, paths)
        print(f"  {took['wall']:.1f} s wall, {took['cpu']:.1f} s CPU (this process)  [{load()}]")
    if "verify" in steps:
        verify(table, backbone, paths, args.options, args.work, args.verify_images)
    if "extract" in steps:
        extract_step(args)
    if "ladder" in steps:
        ladder_step(args)
    if "compare" in steps:
        compare_step(args)
    if "head" in steps:
        head_step(args)


if __name__ == "__main__":
    main()
