"""A run's model in words, as the run did it: the model (never another's name), its chosen
hyperparameter (the head's epoch, LightGBM's boosting round, the linear probe's C), its stopping
rule (a fixed ``--epochs N`` run does not stop early) and which embedding source, if any, had
random weights. Reports, the model card and the CLI read these, so they say the same thing.

``info`` is a run summary: a ``RunSummary`` or its dict (``metrics.json``'s ``"info"``).
"""
from __future__ import annotations

TITLES = {"head": "fusion head", "lgbm": "LightGBM", "linear": "linear probe"}


class _Read(dict):
    """A summary dict read by attribute; a key it lacks (an older metrics.json) reads None."""
    def __getattr__(self, key: str):
        return self.get(key)


def _read(info):
    return _Read(info) if isinstance(info, dict) else info


def _grid(values) -> str:
    return ", ".join(f"{float(v):g}" for v in values)


def model_words(info) -> str:
    """``linear probe, inputs image; C = 0.01, chosen by ...``: the model and what it chose."""
    info = _read(info)
    cfg = info.config or {}
    title = TITLES.get(info.model, str(info.model))
    what = f"{title} ({cfg['head']})" if info.model == "head" and cfg.get("head") else title
    line = f"{what}, inputs {cfg.get('inputs')}"
    if info.model == "linear":
        cs = cfg.get("cs") or []
        c = cfg.get("C")
        chosen = f"C = {float(c):g}" if c is not None else "C not recorded"
        return line + (f"; {chosen}, chosen by a grouped {cfg.get('inner_folds')}-fold inner "
                       f"CV on the training rows from {_grid(cs)}" if len(cs) > 1 else
                       f"; {chosen} (fixed)")
    if info.model == "lgbm":
        return line + f"; best boosting round {info.best_epoch} of up to " \
                      f"{cfg.get('n_estimators')}"
    if cfg.get("epochs") is not None:
        return line + f"; trained a fixed {cfg['epochs']} epochs, the last weights kept"
    return line + f"; best epoch {info.best_epoch} of {info.epochs_run} run"


def model_line(info) -> str:
    """The report's model line: ``- model: **linear** (linear probe, inputs image; C = ...)``."""
    return f"- model: **{_read(info).model}** ({model_words(info)})"


def stopping_text(info) -> str:
    """The stopping rule and the part that calibrates: ``early stopping (balanced_loss) and
    calibration on val``, or no early stopping for a fixed-epoch head and a linear probe."""
    info = _read(info)
    cfg = info.config or {}
    on = info.select_on
    if info.model == "linear":
        return f"no early stopping (a convex fit, C by inner CV); calibration on {on}"
    if info.model == "lgbm":
        return (f"early stopping on {on} (no improvement in {cfg.get('early_stopping')} "
                f"rounds) and calibration on {on}")
    if cfg.get("epochs") is not None:
        return f"no early stopping (a fixed --epochs {cfg['epochs']}); calibration on {on}"
    return f"early stopping on {on} ({cfg.get('stop_on', 'loss')}) and calibration on {on}"


def random_sources(identity: dict | None) -> list[str]:
    """The sources of a fused run whose backbone had random weights, each named by its cache
    and backbone; empty for a single source or where every source is random (the whole run
    then is)."""
    identity = identity or {}
    parts = identity.get("fused") or []
    names = identity.get("sources") or [f"source {i + 1}" for i in range(len(parts))]
    random = [f"`{name}` ({p.get('backbone', '?')})" for name, p in zip(names, parts, strict=False)
              if (p.get("weights") or {}).get("kind") == "random"]
    return random if 0 < len(random) < len(parts) else []


def random_note(info: dict) -> str:
    """`` (RANDOM weights)`` or `` (RANDOM weights in `b.h5` (test_convnext))``, for one line."""
    some = random_sources(info.get("identity"))
    if some:
        return f" (RANDOM weights in {', '.join(some)})"
    return " (RANDOM weights)" if info.get("random_weights") else ""


def random_scope(identity: dict | None, random_weights: bool | None = None) -> str:
    """What had random weights, in words: ``RANDOM backbone weights`` (the whole run: one
    source, or every fused one), ``RANDOM backbone weights in 1 of 2 fused sources: `b.h5`
    (test_convnext)`` (only those), or "" (real weights). ``random_weights`` overrides the
    identity's own answer for the whole run (a summary's flag)."""
    some = random_sources(identity)
    if some:
        n = len((identity or {}).get("fused") or [])
        return f"RANDOM backbone weights in {len(some)} of {n} fused sources: {', '.join(some)}"
    if random_weights is None:
        identity = identity or {}
        random_weights = any((p.get("weights") or {}).get("kind") == "random"
                             for p in identity.get("fused") or [identity])
    return "RANDOM backbone weights" if random_weights else ""


def random_line(identity: dict | None, whole: str, random_weights: bool | None = None) -> str:
    """One line for a console, page or figure (predict, explain, serve): the whole run's
    ``RANDOM backbone weights: {whole}``, or the fused sources that were random by name
    (``random_scope``); "" for real weights."""
    scope = random_scope(identity, random_weights)
    if random_sources(identity):
        return f"{scope}: those embeddings carry no image knowledge (the other sources have " \
               "real weights)."
    return f"{scope}: {whole}" if scope else ""


def weights_banner(random_weights: bool, identity: dict | None = None) -> list[str]:
    """The report's warning: the whole run (one random source, or all of them), or the fused
    sources that were random, by name."""
    if random_sources(identity):
        return [f"> **{random_scope(identity)}.** Those embeddings come from a randomly "
                "initialised network and carry no image knowledge; the other source(s) have "
                "real weights.",
                ""]
    if random_weights:
        return ["> **RANDOM backbone weights.** The embeddings come from a randomly initialised "
                "network: these numbers show the pipeline works, not how well a real model "
                "classifies lesions.", ""]
    return []
