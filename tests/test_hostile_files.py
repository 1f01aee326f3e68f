"""Hostile settings files: spec files, ``--config`` files and a bundle's config.json.

Every file a user hands in is parsed by ``skinfeat.schema`` into a typed dataclass: a wrong type,
an unknown key, an out-of-range value, a spec that contradicts itself or a syntax error is one
``Error:`` line naming the file and the key, and the run folder and cache made before are left
byte-identical. The second half tests ``schema.parse`` itself, type by type, and that valid files
(every preset, a run's own config.json, TOML tables) still load to the right values.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
from hostile import ok, refused

from skinfeat.data.presets import PRESETS
from skinfeat.data.spec import DatasetSpec, SpecError, load_spec
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import ConfigError, RunConfig, read_config_file
from skinfeat.schema import (
    ONE_OR_MANY,
    Ge,
    Gt,
    Lt,
    SchemaError,
    dump,
    parse,
    read_settings,
    validate,
)

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input


@pytest.fixture(scope="module")
def run(synth_dir, synth_cache, tmp_path_factory) -> Path:
    """A finished fit-head run (the artifact every hostile case must leave untouched)."""
    out = tmp_path_factory.mktemp("hostile_files") / "run"
    ok("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", out, "--epochs", "2",
       "--seed", "0")
    return out


def ham_spec(**changes) -> dict:
    """The synthetic set's layout as a spec file's table, with some keys changed."""
    d = {**PRESETS["ham10000"].to_dict(), "name": "my-ham"}
    d.update(changes)
    return d


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- spec files (--spec)
SPEC_CASES = {
    "string_for_list": (ham_spec(numeric="age"),
                        ["key 'numeric'", "expected a list of strings", "got a string ('age')"]),
    "number_for_column": (ham_spec(label_column=5),
                          ["key 'label_column'", "expected a string or null", "an integer (5)"]),
    "string_for_bool": (ham_spec(onehot="no"), ["key 'onehot'", "true or false"]),
    "unknown_key": (ham_spec(colour="red"), ["unknown key(s) colour", "known: name"]),
    "missing_name": ({k: v for k, v in ham_spec().items() if k != "name"},
                     ["key 'name'", "required"]),
    "duplicate_class": (ham_spec(classes=["mel", "MEL", "nv"]),
                        ["key 'classes'", "mel listed twice"]),
    "duplicate_field": (ham_spec(numeric=["age", "Age"]), ["key 'numeric'", "age listed twice"]),
    "merge_cycle": (ham_spec(merges={"a": "b", "b": "a"}),
                    ["key 'merges.a'", "a -> b -> a is a cycle"]),
    "merge_into_itself": (ham_spec(merges={"mel": "mel"}),
                          ["key 'merges.mel'", "merges 'mel' into itself"]),
    "merge_chain": (ham_spec(merges={"bod": "scc", "scc": "bcc"}),
                    ["key 'merges.bod'", "bod -> scc -> bcc is a chain", "bod = 'bcc'"]),
    "merged_class_kept": (ham_spec(merges={"nv": "mel"}),
                          ["key 'merges.nv'", "also listed in classes"]),
    "merge_into_unknown": (ham_spec(merges={"bod": "scc"}),
                           ["key 'merges'", "unknown class(es) scc"]),
    "range_reversed": (ham_spec(ranges={"age": [120, 0]}),
                       ["key 'ranges.age'", "low 120 is above high 0"]),
    "range_infinite": (ham_spec(ranges={"age": [0, math.inf]}),
                       ["key 'ranges.age[1]'", "finite number, got inf"]),
    "range_one_number": (ham_spec(ranges={"age": 120}),
                         ["key 'ranges.age'", "a list of 2 (a number, a number)"]),
    "name_for_unknown_class": (ham_spec(class_names={"xyz": "mystery"}),
                               ["key 'class_names'", "xyz not among the classes"]),
    "positive_unknown": (ham_spec(positive="melanoma"),
                         ["key 'positive'", "melanoma not among the classes"]),
    "onehot_without_classes": (ham_spec(onehot=True, label_column=None, classes=[]),
                               ["key 'classes'", "onehot = true needs the classes"]),
    "leaky_field": (ham_spec(categorical=["sex", "dx_type"]),
                    ["key 'categorical'", "dx_type leak(s) the label"]),
    "not_a_table": ([1, 2], ["expected a table of keys, got a list"]),
}


@pytest.mark.parametrize("case", SPEC_CASES)
def test_bad_spec_file_is_one_line_naming_file_and_key(case, run, synth_dir, synth_cache,
                                                      tmp_path):
    data, needles = SPEC_CASES[case]
    bad = write(tmp_path / f"{case}.json", json.dumps(data))
    refused(["data", "check", synth_dir, "--spec", bad], bad.name, *needles,
            protect=[run, synth_cache, bad])


@pytest.mark.parametrize("name, text, needles", [
    ("syntax.json", '{"name": "x",\n "classes": ["mel"]\n "numeric": []}',
     ["not valid JSON", "Expecting ',' delimiter at line 3, column 2"]),
    ("empty.json", "", ["not valid JSON", "line 1, column 1"]),
    ("syntax.toml", 'name = "x"\nclasses = ["mel",\nnumeric = 3\n', ["not valid TOML", "line 3"]),
    ("outside.toml", 'name = "x"\n[dataset]\nclasses = ["mel"]\n',
     ["key(s) name outside the [dataset] table"]),
    ("typed.toml", '[dataset]\nname = "x"\nnumeric = "age"\n',
     ["key 'dataset.numeric'", "expected a list of strings"]),
])
def test_bad_spec_syntax_names_file_and_line(name, text, needles, run, synth_dir, synth_cache,
                                             tmp_path):
    bad = write(tmp_path / name, text)
    refused(["data", "check", synth_dir, "--spec", bad], name, *needles, protect=[run, bad])


def test_spec_that_is_not_utf8_is_refused(run, synth_dir, tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    refused(["data", "check", synth_dir, "--spec", bad], "latin1.json", "not UTF-8 text",
            protect=[run, bad])


def test_bad_spec_leaves_an_existing_run_folder_alone(run, synth_dir, synth_cache, tmp_path):
    """fit-head with --out pointing at the finished run: refused before anything is written."""
    bad = write(tmp_path / "spec.toml", 'name = "x"\nlabel_column = "dx"\nmerges = {a = "a"}\n')
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", run, "--spec",
             bad], "spec.toml", "key 'merges.a'", "into itself", protect=[run, synth_cache])


# ---------------------------------------------------------------- --config files
CONFIG_CASES = {
    "lr_string": ('[head]\nlr = "0.001"\n',
                  ["key 'head.lr'", "expected a number > 0", "got a string ('0.001')"]),
    "epochs_float": ("[head]\nepochs = 12.0\n",
                     ["key 'head.epochs'", "expected an integer >= 1", "a number (12.0)"]),
    "batch_size_bool": ("[head]\nbatch_size = true\n",
                        ["key 'head.batch_size'", "got a boolean (true)"]),
    "split_typo": ('split = "lesionn"\n',
                   ["key 'split'", "use group (or lesion), image, none", "'lesionn'"]),
    "seed_string": ('seed = "42"\n', ["key 'seed'", "expected an integer"]),
    "tta_string": ('tta = "yes"\n', ["key 'tta'", "true or false"]),
    "dropout_range": ("[head]\ndropout = 1.5\n",
                      ["key 'head.dropout'", ">= 0 and < 1", "1.5"]),
    "lr_negative": ("[head]\nlr = -0.1\n", ["key 'head.lr'", "> 0"]),
    "lr_nan": ("[head]\nlr = nan\n", ["key 'head.lr'", "finite number, got nan"]),
    "num_leaves_range": ("[lgbm]\nnum_leaves = 1\n", ["key 'lgbm.num_leaves'", ">= 2"]),
    "lgbm_unknown": ("[lgbm]\nleaves = 7\n", ["unknown key(s) leaves in [lgbm]", "num_leaves"]),
    "head_unknown": ("[head]\nlearning_rate = 0.1\n",
                     ["unknown key(s) learning_rate in [head]", "known: head, inputs, lr"]),
    "head_not_table": ("head = 3\n", ["key 'head'", "a table of keys"]),
    "sizes_too_big": ("test_size = 0.6\nval_size = 0.5\n",
                      ["key 'val_size'", "test_size + val_size must be below 1"]),
    "none_select_test": ('split = "none"\nselect_on = "test"\n',
                         ["key 'select_on'", "no test part"]),
    "calibration_typo": ('calibration = "platt"\n', ["key 'calibration'", "'logit_adjust'"]),
    "table_outside_run": ('[run]\nseed = 1\n[head]\nlr = 0.01\n',
                          ["key(s) head outside the [run] table", "[run.head]"]),
    "typed_under_run": ('[run.head]\nepochs = 2.5\n', ["key 'run.head.epochs'"]),
    "syntax": ("[head]\nlr = 0.001\nepochs = \n", ["not valid TOML", "line 3"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_file_is_one_line_naming_file_and_key(case, run, synth_dir, synth_cache,
                                                        tmp_path):
    text, needles = CONFIG_CASES[case]
    bad = write(tmp_path / f"{case}.toml", text)
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", run, "--config",
             bad], bad.name, *needles, protect=[run, synth_cache, bad])


def test_bad_json_config_names_line_and_column(run, synth_dir, synth_cache, tmp_path):
    bad = write(tmp_path / "recipe.json", '{"model": "head",\n "head": {"lr": 0.01,}}\n')
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", run, "--config",
             bad], "recipe.json", "not valid JSON", "line 2, column 22", protect=[run, bad])


@pytest.mark.parametrize("command", ["cv", "tune"])
def test_cv_and_tune_read_config_files_the_same_way(command, run, synth_dir, synth_cache,
                                                    tmp_path):
    bad = write(tmp_path / "recipe.toml", "[head]\nmax_epochs = 2.0\n")
    refused([command, "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "out",
             "--config", bad], "recipe.toml", "key 'head.max_epochs'", "an integer",
            protect=[run, synth_cache])
    assert not (tmp_path / "out").exists()


def test_edited_run_config_names_the_run_key(run, synth_dir, synth_cache, tmp_path):
    """A run's own config.json as --config: its "run" entry is parsed, keys named run.*."""
    config = json.loads((run / "config.json").read_text())
    # the default model: the head member's settings live in the ensemble's table
    config["run"]["ensemble"]["settings"]["patience"] = "5"
    bad = write(tmp_path / "config.json", json.dumps(config))
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "x",
             "--config", bad], "config.json", "key 'run.ensemble.settings.patience'",
            "an integer >= 1", protect=[run])
    del config["run"]
    write(bad, json.dumps(config))
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "x",
             "--config", bad], "config.json", "holds no recipe", protect=[run])


def test_bad_flag_values_name_the_key(run, synth_dir, synth_cache):
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", run, "--lr",
             "-1"], "key 'head.lr'", "> 0", protect=[run])
    refused(["fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", run,
             "--lgbm-early-stopping", "0"], "key 'lgbm.early_stopping'", ">= 1", protect=[run])


# ---------------------------------------------------------------- a bundle's config.json
@pytest.mark.parametrize("where, value, needles", [
    ("dataset", {"numeric": "age"}, ["key 'dataset.numeric'", "a list of strings"]),
    ("dataset", {"merges": {"bkl": "bkl"}}, ["key 'dataset.merges.bkl'", "into itself"]),
    ("dataset", {"extra": 1}, ["unknown key(s) extra in [dataset]"]),
    ("task", {"kind": "binaryy"}, ["key 'task.kind'", "'multiclass', 'binary'"]),
])
def test_edited_bundle_spec_is_refused_by_predict(where, value, needles, run, synth_cache,
                                                  tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(run, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config[where] = {**config[where], **value}
    write(bundle / "config.json", json.dumps(config))
    refused(["predict", "--model", bundle, "--image", "ISIC_0000000.jpg", "--cache", synth_cache],
            "config.json", *needles, protect=[bundle, synth_cache])


# ---------------------------------------------------------------- valid files keep working
def test_every_preset_round_trips_through_the_schema():
    for name, spec in PRESETS.items():
        assert DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())), name) == spec


def test_spec_file_values_arrive_typed_and_normalised(tmp_path):
    path = write(tmp_path / "mine.toml", """
[dataset]
name = "mine"
classes = ["Benign", " MALIGNANT"]
labels_file = "labels.csv"
label_column = "Diagnosis_Code"
numeric = ["Age"]
ranges = {Age = [0, 100]}
merges = {BOD = "malignant"}
positive = "Malignant"
""")
    spec = load_spec(path)
    assert spec.classes == ("benign", "malignant") and spec.labels_file == ("labels.csv",)
    assert spec.label_column == "diagnosis_code" and spec.numeric == ("age",)
    assert spec.ranges == {"age": (0.0, 100.0)} and isinstance(spec.ranges["age"][0], float)
    assert spec.merges == {"bod": "malignant"} and spec.positive == "malignant"


def test_a_bundle_config_is_a_valid_spec_and_recipe(run):
    config = json.loads((run / "config.json").read_text())
    assert load_spec(run / "config.json") == DatasetSpec.from_dict(config["dataset"])
    cfg = read_config_file(run / "config.json")
    assert cfg.to_dict() == config["run"] and cfg.params.settings == {"epochs": 2}


def test_toml_recipe_under_run_table_and_int_for_float(tmp_path):
    path = write(tmp_path / "r.toml", '[run]\nmodel = "lgbm"\n[run.head]\nlr = 1\n'
                 '[run.lgbm]\ncolsample = 1\n')
    cfg = read_config_file(path)
    assert cfg.model == "lgbm" and cfg.params.colsample == 1.0
    assert isinstance(cfg.params.colsample, float)
    # a recipe written with every model's table: the others are left out
    assert "head" not in cfg.to_dict() and cfg.to_dict()["lgbm"]["colsample"] == 1.0


def test_reference_encoding_starts_from_the_reference_head(tmp_path):
    cfg = read_config_file(write(tmp_path / "r.toml",
                                 'encoding = "reference"\n[head]\nlr = 0.01\n'))
    assert cfg.params == HeadConfig.reference(lr=0.01)


def test_python_built_configs_are_checked_too():
    with pytest.raises(SpecError, match=r"spec 'x': key 'numeric': expected a list of strings"):
        DatasetSpec(name="x", numeric="age")   # once a tuple of three letters
    assert DatasetSpec(name="x", numeric=["age"]).numeric == ("age",)
    with pytest.raises(SchemaError, match=r"key 'lr': expected a number > 0, got an integer"):
        HeadConfig(lr=-1).check()
    with pytest.raises(ConfigError, match=r"key 'head.epochs'"):
        RunConfig(params=HeadConfig(epochs=0)).check()
    with pytest.raises(SpecError, match="key 'classes'"):
        PRESETS["ham10000"].with_columns(classes=("mel", "Mel"))


# ---------------------------------------------------------------- schema.parse, type by type
@dataclass
class Inner:
    rate: Annotated[float, Gt(0)] = 1.0


@dataclass
class Every:
    name: str = ""
    count: int = 0
    rate: float = 0.0
    flag: bool = False
    maybe: int | None = None
    names: tuple[str, ...] = ()
    files: Annotated[tuple[str, ...], ONE_OR_MANY] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    labels: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    share: Annotated[float, Ge(0), Lt(1)] = 0.5
    inner: Inner = field(default_factory=Inner)


@dataclass
class Span:
    low: float = 0.0
    high: float = 1.0

    def check(self) -> None:
        if self.low > self.high:
            raise SchemaError("must not exceed high", "low")


@dataclass
class Outer:
    span: Span = field(default_factory=Span)


@pytest.mark.parametrize("key, good, parsed, bad, needles", [
    ("name", "x", "x", 3, ["expected a string, got an integer (3)"]),
    ("count", 12, 12, 12.0, ["expected an integer, got a number (12.0)"]),
    ("count", -3, -3, True, ["expected an integer, got a boolean (true)"]),
    ("rate", 2, 2.0, "0.1", ["expected a number, got a string ('0.1')"]),
    ("rate", 0.5, 0.5, False, ["expected a number, got a boolean (false)"]),
    ("flag", True, True, 1, ["expected true or false, got an integer (1)"]),
    ("maybe", None, None, "7", ["expected an integer or null"]),
    ("maybe", 7, 7, 7.5, ["expected an integer or null, got a number (7.5)"]),
    ("names", ["a", "b"], ("a", "b"), "ab", ["expected a list of strings, got a string ('ab')"]),
    ("names", [], (), ["a", 1], ["key 'names[1]'", "expected a string"]),
    ("files", "one.csv", ("one.csv",), [1], ["key 'files[0]'"]),
    ("files", ["a", "b"], ("a", "b"), {"a": 1}, ["(or one value)"]),
    ("pair", [1, 2.5], (1.0, 2.5), [1, 2, 3], ["expected a list of 2 (a number, a number)"]),
    ("labels", {"a": "A"}, {"a": "A"}, {"a": 1}, ["key 'labels.a'", "expected a string"]),
    ("labels", {}, {}, ["a"], ["expected a table of strings, got a list"]),
    ("bounds", {"age": [0, 9]}, {"age": (0.0, 9.0)}, {"age": [0, "9"]},
     ["key 'bounds.age[1]'", "expected a number"]),
    ("mode", "b", "b", "c", ["expected one of 'a', 'b', got a string ('c')"]),
    ("share", 0, 0.0, 1, ["expected a number >= 0 and < 1, got an integer (1)"]),
    ("inner", {"rate": 3}, Inner(3.0), {"rate": 0}, ["key 'inner.rate'", "a number > 0"]),
    ("inner", {}, Inner(), {"speed": 1}, ["unknown key(s) speed in [inner]; known: rate"]),
])
def test_parse_accepts_the_right_type_and_refuses_the_wrong(key, good, parsed, bad, needles):
    got = getattr(parse(Every, {key: good}, "f.toml"), key)
    assert got == parsed and type(got) is type(parsed)
    with pytest.raises(SchemaError) as err:
        parse(Every, {key: bad}, "f.toml")
    line = str(err.value)
    assert line.startswith("f.toml: ") and "\n" not in line
    assert key in line, line
    for needle in needles:
        assert needle in line, (needle, line)


def test_parse_error_class_required_keys_and_prefix():
    @dataclass
    class Need:
        name: str

    with pytest.raises(SpecError, match=r"^a.json: key 'name': required, but missing$"):
        parse(Need, {}, "a.json", SpecError)
    with pytest.raises(SchemaError, match=r"^b.json: key 'x.name': expected a string"):
        parse(Need, {"name": 1}, "b.json", at="x")
    with pytest.raises(SchemaError, match=r"^c.json: key 'x': expected a table of keys"):
        parse(Need, "text", "c.json", at="x")


def test_check_errors_name_the_file_and_nested_key():
    with pytest.raises(SchemaError, match=r"^o.toml: key 'span.low': must not exceed high$"):
        parse(Outer, {"span": {"low": 2}}, "o.toml")


def test_validate_and_dump():
    e = Every(names=["a"], pair=(1, 2))
    assert validate(e)["names"] == ("a",) and validate(e)["pair"] == (1.0, 2.0)
    with pytest.raises(SchemaError, match=r"^key 'inner.rate': expected a number > 0"):
        validate(Every(inner=Inner(rate=0)))
    d = dump(Every(names=("a",), bounds={"x": (0.0, 1.0)}))
    assert d["names"] == ["a"] and d["bounds"] == {"x": [0.0, 1.0]} and d["inner"] == {"rate": 1.0}
    assert parse(Every, json.loads(json.dumps(d)), "d") == Every(names=("a",),
                                                                 bounds={"x": (0.0, 1.0)})


def test_read_settings_reports_line_and_column(tmp_path):
    with pytest.raises(SchemaError, match=r"x.json: not valid JSON: Expecting value at line 2, "
                       r"column 7"):
        read_settings(write(tmp_path / "x.json", '{\n "a": }'))
    with pytest.raises(SchemaError, match=r"y.toml: not valid TOML: .*line 1, column 5"):
        read_settings(write(tmp_path / "y.toml", "a = \n"))
    with pytest.raises(OSError):
        read_settings(tmp_path / "missing.json")
    assert read_settings(write(tmp_path / "z.toml", "[t]\na = 1\n")) == {"t": {"a": 1}}
