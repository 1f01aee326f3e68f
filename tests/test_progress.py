"""Bars on the library's long loops (issue 27): silent by default, a bar with a total from the
command line; the linear probe's inner C search and the group bootstraps report their steps."""
from __future__ import annotations

import numpy as np
import pytest
from test_linear import _data  # the probe tests' synthetic rows

from skinfeat import progress
from skinfeat.evaluate.metrics import bootstrap_ci
from skinfeat.learn.linear import LinearConfig, LinearProbe


class Recorder:
    """A factory that records each bar: its description, total, steps and whether it closed."""

    def __init__(self):
        self.bars = []

    def __call__(self, total=None, desc=""):
        bar = {"desc": desc, "total": total, "n": 0, "closed": False}
        self.bars.append(bar)

        class Bar:
            def update(self, n=1):
                bar["n"] += n

            def close(self):
                bar["closed"] = True

        return Bar()

    def named(self, word):
        return [b for b in self.bars if word in b["desc"]]


def test_linear_c_search_has_a_bar_over_its_inner_folds(capsys):
    train, groups = _data()
    cfg = LinearConfig(cs=(0.1, 1.0), inner_folds=4, seed=1)   # a search: two Cs are enough
    silent = LinearProbe(cfg).fit(train, train, groups, n_classes=3)
    assert capsys.readouterr() == ("", "")   # no factory: nothing printed
    rec = Recorder()
    with progress.bars(rec):
        shown = LinearProbe(cfg).fit(train, train, groups, n_classes=3)
    (bar,) = rec.named("C search")
    assert bar == {"desc": bar["desc"], "total": 4, "n": 4, "closed": True}
    assert silent.c_ == shown.c_
    np.testing.assert_array_equal(silent.coef_, shown.coef_)
    assert progress.current() is None   # the block restored the silent default


@pytest.mark.parametrize("n_boot,chunk", [(250, 100), (30, 100)])
def test_bootstrap_bar_counts_resamples(n_boot, chunk, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    proba = rng.dirichlet([1, 1], 120)
    groups = rng.integers(0, 40, 120)
    args = dict(n_boot=n_boot, seed=3, groups=groups, chunk=chunk)
    silent = bootstrap_ci(y, proba, ["a", "b"], **args)
    assert capsys.readouterr() == ("", "")
    rec = Recorder()
    with progress.bars(rec):
        shown = bootstrap_ci(y, proba, ["a", "b"], **args)
    (bar,) = rec.named("bootstrap")
    assert (bar["total"], bar["n"], bar["closed"]) == (n_boot, n_boot, True)
    assert silent == shown


def test_a_bar_closes_when_its_loop_raises():
    rec = Recorder()
    with pytest.raises(RuntimeError), progress.bars(rec):
        for i in progress.track(range(5), desc="boom"):
            if i == 2:
                raise RuntimeError("stop")
    (bar,) = rec.bars
    assert (bar["total"], bar["n"], bar["closed"]) == (5, 2, True)


@pytest.mark.slow
def test_cli_shows_the_c_search_bar(synth_dir, synth_cache, tmp_path, monkeypatch):
    """From the command line the factory is installed: a tqdm bar (shown at once here, not
    after tqdm's 2 s delay) names the C search on standard error."""
    from click.testing import CliRunner

    from skinfeat.cli import main
    from skinfeat.commands import console

    real = console.tqdm_factory
    monkeypatch.setattr(console, "tqdm_factory", lambda: real(delay=0, disable=False))
    recipe = tmp_path / "recipe.toml"   # two Cs: a search, without the default grid's cost
    recipe.write_text('model = "linear"\n[linear]\ncs = [0.01, 0.1]\n')
    r = CliRunner().invoke(main, ["fit-head", "--data", str(synth_dir), "--cache",
                                  str(synth_cache), "--out", str(tmp_path / "fit"),
                                  "--model", "linear", "--config", str(recipe)])
    assert r.exit_code == 0, r.output
    assert "linear C search" in r.stderr
    assert "linear C search" not in r.stdout


@pytest.mark.slow
def test_tune_bar_counts_a_resumed_studys_trials(synth_dir, synth_cache, tmp_path, monkeypatch):
    """A resumed study already holds trials: tune's bar starts at them and ends at its total."""
    pytest.importorskip("optuna")
    from skinfeat.cli import main
    from skinfeat.commands import stage_two

    rec = Recorder()
    monkeypatch.setattr(stage_two, "progress_bar",
                        lambda desc, unit="img", total=None: rec(total=total, desc=desc))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["tune", "--data", str(synth_dir), "--cache", str(synth_cache), "--storage", url,
            "--folds", "2", "--study-name", "s1", "--max-epochs", "2", "--jobs", "1"]
    from click.testing import CliRunner
    for out, trials in (("a", "2"), ("b", "3")):
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / out), "--trials", trials])
        assert r.exit_code == 0, r.output
    first, resumed = rec.named("tune")
    assert (first["total"], first["n"]) == (2, 2)
    assert (resumed["total"], resumed["n"]) == (3, 3)   # 2 kept + 1 run
