"""Rebuild a run's model card (README.md) after the fact (``skinfeat card``): its metrics.json, its
bundle's
dataset spec and every ``eval-*`` evaluation, rendered by ``report.write_model_card`` with the
checklist of ``checklist``."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.spec import DatasetSpec
from ..errors import InputError
from .hub_card import CARD
from .report import write_model_card


def read_evaluations(run_dir: Path) -> list[dict]:
    """The ``evaluate_metrics.json`` of every ``eval-*`` folder of a run, sorted by folder."""
    out = []
    for path in sorted(Path(run_dir).glob("eval-*/evaluate_metrics.json")):
        try:
            out.append({"name": path.parent.name, **json.loads(path.read_text())})
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from exc
    return out


def rewrite_card(run_dir: str | Path) -> Path:
    """Rewrite ``run_dir/README.md`` (the model card) from its metrics.json, its bundle's dataset
    spec and its evaluations (``eval-*``); returns the card's path."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    try:
        summary = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: not a fit-head run folder ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("model", "bootstrap_ci95", "info") if k not in summary]
    if missing:
        raise InputError(f"{path}: key {missing[0]!r} missing: not a fit-head run's metrics.json")
    spec = None
    for config in sorted(run_dir.glob("*/config.json")) + [run_dir / "config.json"]:
        if config.exists():
            entry = json.loads(config.read_text()).get("dataset")
            if isinstance(entry, dict):
                spec = DatasetSpec.from_dict(entry, str(config), "dataset")
                break
    write_model_card(run_dir, summary["model"], summary["bootstrap_ci95"], summary["info"],
                     summary=summary, spec=spec, evaluations=read_evaluations(run_dir))
    return run_dir / CARD
