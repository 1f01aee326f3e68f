"""One decision, shown the same everywhere: the most probable class and its probability, the
model's decision, and the rule that made it (one line).

The calibrated probabilities say how likely each class is; the decision is what a
class-balanced metric scores (``learn.calibration``): the balanced rule argmax p(c | x) * w_c
(w_c the training class weights, so rare classes win where they are most above their training
prevalence), or for a binary model with a threshold chosen on validation, p(class 1) >=
threshold. The two can differ ("nv 47 %" most probable, "df" decided), so every surface that
shows a decision (predict's text, ``--json`` and CSV, explain's figure and JSON, serve's page
and API, the ONNX graph's ``decision`` output) shows these four fields, built here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FIELDS = ("most_probable", "most_probable_probability", "decision", "rule")


def decision_rule(classes: Sequence[str], threshold: float | None,
                  offset: Sequence[float] | None) -> str:
    """The rule in one line: a binary threshold, the balanced rule (class weights), or argmax."""
    if threshold is not None and len(classes) == 2:
        return (f"threshold: {classes[1]} when p({classes[1]}) >= {threshold:.3f} (chosen on "
                f"validation), else {classes[0]}")
    if offset is not None and np.ptp(np.asarray(offset, dtype=float)) > 0:
        return ("balanced: argmax of p(class) x training class weight, the class most above "
                "its training prevalence")
    return "argmax: the most probable class"


@dataclass(frozen=True)
class Decision:
    """One row's decision fields (``FIELDS``)."""
    most_probable: str
    most_probable_probability: float
    decision: str
    rule: str

    def to_dict(self) -> dict:
        return {"most_probable": self.most_probable,
                "most_probable_probability": self.most_probable_probability,
                "decision": self.decision, "rule": self.rule}

    def line(self) -> str:
        """``most probable: nv (47.0 %); decision: df (rule: ...)``, as text output shows it."""
        agree = "" if self.decision == self.most_probable else " (differs from the most probable)"
        p = 100 * self.most_probable_probability
        return (f"most probable: {self.most_probable} ({p:.1f} %); "
                f"decision: {self.decision}{agree}; rule: {self.rule}")


def decisions(classes: Sequence[str], proba: np.ndarray, decided: np.ndarray,
              rule: str) -> list[Decision | None]:
    """Per row of (N, K) probabilities and (N,) decided indices; None where a row was not
    scored (decided -1 or NaN probabilities)."""
    out: list[Decision | None] = []
    for p, d in zip(np.asarray(proba, dtype=float), np.asarray(decided), strict=False):
        if int(d) < 0 or not np.isfinite(p).all():
            out.append(None)
            continue
        top = int(np.argmax(p))
        out.append(Decision(classes[top], float(p[top]), classes[int(d)], rule))
    return out


def predictor_rule(predictor) -> str:
    """The rule of a loaded model (``LoadedBundle``: its calibrator's offsets and threshold)."""
    return decision_rule(predictor.classes, predictor.threshold,
                         predictor.calibrator.decision_offset)


def calibration_text(predictor) -> str:
    """The calibration in words; a fold ensemble's is its members' (each logit-adjusted and
    temperature-scaled on its own fold), not the identity it applies to their mean."""
    if not predictor.members:
        return predictor.calibrator.describe()
    cals = [m.calibrator for m in predictor.members]
    methods = sorted({c.method for c in cals})
    temps = ", ".join(f"{c.temperature:.3f}" for c in cals)
    kind = cals[0].describe().split(" (T =")[0] if len(methods) == 1 else \
        f"per member ({', '.join(methods)})"
    return (f"fold ensemble of {len(cals)} members, each calibrated on its own validation "
            f"part: {kind} (T = {temps}); their probabilities averaged")
