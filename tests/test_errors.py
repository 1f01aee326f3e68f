"""One error type: every error skinfeat raises on purpose is a ``SkinfeatError``, which the CLI
prints as one ``Error: ...`` line; any other exception is not dressed up as one (issue 31)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from click.testing import CliRunner

import skinfeat
from skinfeat.cli import main
from skinfeat.errors import InputError, SkinfeatError

OPTIONAL = ("serve", "explain", "export", "sklearn")   # need extras; skipped when absent


def package_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(skinfeat.__path__, "skinfeat."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            assert info.name.rpartition(".")[2] in OPTIONAL, info.name
            continue
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, BaseException) \
                    and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_is_a_skinfeat_error():
    found = package_exceptions()
    assert len(found) >= 10, sorted(found)   # the walk found the classes, not none
    stray = sorted(name for name, cls in found.items() if not issubclass(cls, SkinfeatError))
    assert not stray, f"not SkinfeatError subclasses: {stray}"


def test_a_refusal_is_still_the_builtin_error_callers_catch():
    from skinfeat.data.splits import parse_split
    with pytest.raises(InputError) as exc:
        parse_split("by:")
    assert isinstance(exc.value, ValueError) and "--split" in str(exc.value)
    assert skinfeat.SkinfeatError is SkinfeatError


def card(monkeypatch, tmp_path, exc: BaseException, *flags: str):
    def write_card(run):
        raise exc
    monkeypatch.setattr("skinfeat.api.write_card", write_card)
    return CliRunner().invoke(main, [*flags, "card", "--model", str(tmp_path)])


def test_cli_prints_a_skinfeat_error_as_one_error_line(monkeypatch, tmp_path):
    r = card(monkeypatch, tmp_path, InputError("bad.json: key 'x' missing"))
    assert r.exit_code == 1 and r.output.strip() == "Error: bad.json: key 'x' missing"


def test_cli_prints_the_file_system_refusing_a_path_as_one_error_line(monkeypatch, tmp_path):
    r = card(monkeypatch, tmp_path, PermissionError(13, "Permission denied", "run/metrics.json"))
    assert r.exit_code == 1 and r.output.strip() == "Error: run/metrics.json: Permission denied"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("boom"), KeyError("boom"),
                                 OSError("boom")])
def test_cli_does_not_dress_an_unexpected_exception_as_an_error_line(monkeypatch, tmp_path, exc):
    r = card(monkeypatch, tmp_path, exc)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert not any(line.startswith("Error:") for line in lines), r.output
    assert lines[0].startswith(f"Unexpected {type(exc).__name__}: ") and "boom" in lines[0]
    assert "-v" in lines[-1] and "traceback" in lines[-1]


def test_cli_with_v_lets_an_unexpected_exception_show_its_traceback(monkeypatch, tmp_path):
    r = card(monkeypatch, tmp_path, RuntimeError("boom"), "-v")
    assert isinstance(r.exception, RuntimeError) and str(r.exception) == "boom"
    assert "Unexpected" not in r.output
