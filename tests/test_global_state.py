"""Library calls set no global state: PIL's pixel limit, matplotlib's backend and pyplot, and
Optuna's verbosity are the caller's (a notebook's) settings, before and after."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_imports_and_figures_leave_pil_and_matplotlib_alone(tmp_path):
    out = run(f"""
        import sys
        from pathlib import Path
        import numpy as np
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = 12345          # the caller's own choice
        import matplotlib
        # get_backend() itself would import pyplot to resolve "auto": read the raw setting
        backend = lambda: dict.__getitem__(matplotlib.rcParams, "backend")
        before = backend()
        import skinfeat.embed.transform, skinfeat.deploy.explain, skinfeat.learn.tune
        from skinfeat.evaluate.report import save_confusion_png, save_reliability_png
        save_confusion_png([[3, 1], [0, 2]], ["a", "b"], Path({str(tmp_path)!r}) / "c.png")
        save_reliability_png(np.array([0, 1, 1]), {{"m": np.array([[.8, .2], [.3, .7], [.4, .6]])}},
                             Path({str(tmp_path)!r}) / "r.png")
        assert Image.MAX_IMAGE_PIXELS == 12345, Image.MAX_IMAGE_PIXELS
        assert backend() == before, (before, backend())
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
        """)
    assert out.strip() == "ok"
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "r.png").stat().st_size > 0


def test_a_bomb_is_refused_whatever_pils_global_limit(tmp_path):
    from test_bad_input import png_of_size

    png_of_size(tmp_path / "big.png", 12000, 9000)     # 108 Mpx: PIL would only warn
    out = run(f"""
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None                   # the caller switched PIL's check off
        from skinfeat.embed.transform import TransformSpec, load_image
        try:
            load_image({str(tmp_path / 'big.png')!r}, TransformSpec())
        except Image.DecompressionBombError as exc:
            print("refused:", exc)
        """)
    assert out.startswith("refused:") and "decompression bomb" in out


def test_tune_leaves_optuna_verbosity_alone(synth_table, synth_cache, tmp_path):
    import optuna

    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.learn.tune import TuneConfig
    from skinfeat.workflows.tune import tune_run

    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        tune_run(synth_table, synth_cache, tmp_path / "t", TuneConfig(
            trials=1, folds=2, start=RunConfig(params=HeadConfig(max_epochs=2))))
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(optuna.logging.INFO)
