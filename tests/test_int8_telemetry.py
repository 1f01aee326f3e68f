"""The int8 path (OpenVINO + NNCF) runs with OpenVINO's usage telemetry declined."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")
opt_in = pytest.importorskip("openvino_telemetry.utils.opt_in_checker")

from skinfeat.embed import engines  # noqa: E402


def consent() -> str:
    """What OpenVINO's converter and NNCF ask openvino_telemetry before they send anything."""
    return opt_in.OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True).name


class Stop(Exception):
    pass


def test_quantizing_declines_openvino_telemetry(tmp_path, monkeypatch):
    import openvino as ov

    monkeypatch.setenv("HOME", str(tmp_path))      # a user who never ran opt_in_out
    for key in ("CI", "NNCF_CI", "TF_BUILD", "JENKINS_URL"):
        monkeypatch.delenv(key, raising=False)
    assert consent() == "NO_FILE"                  # OpenVINO's default: telemetry is sent
    seen = {}

    def convert_model(*args, **kwargs):
        seen.update(consent=consent(), nncf_ci=os.environ.get("NNCF_CI"))
        raise Stop

    monkeypatch.setattr(ov, "convert_model", convert_model)
    monkeypatch.setattr(engines, "preprocess", lambda path, spec: torch.zeros(3, 8, 8))
    spec = type("Spec", (), {"size": 8})()
    with pytest.raises(Stop):
        engines.build_int8_model(torch.nn.Identity(), spec, [("a", "a.png")], tmp_path / "m.xml")
    assert seen == {"consent": "DECLINED", "nncf_ci": "1"}
    # the switch is for the int8 step only: the environment is as it was
    assert "CI" not in os.environ and "NNCF_CI" not in os.environ and consent() == "NO_FILE"


def test_the_switch_restores_a_users_own_setting(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with engines.openvino_telemetry_off():
        assert os.environ["CI"] == "true"
    assert os.environ["CI"] == "false"
