"""Config values are converted per field from the typed configs, strictly; YAML files refuse aliases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.config import build, load_config_file, options_from, settings_from_dict
from edgetl.errors import ConfigError, TargetError
from edgetl.finetune import FinetuneConfig
from edgetl.prune import PruneConfig
from edgetl.tune.config import TuneConfig

BOOL = "true or false"


def _file(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line_error(result, *words: str) -> str:
    out = result.output.strip()
    assert result.exit_code != 0, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    for word in words:
        assert word in out, out
    return out


def _bomb(tmp_path: Path, key: str = "batch_size") -> Path:
    """Ten nested levels of nine aliases each: 9**10 items once expanded, a few hundred bytes on disk."""
    rows = [f"{key}:", "  choices:", "    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    rows += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return _file(tmp_path, "\n".join(rows) + "\n", "bomb.yaml")


# -- through the CLI: --config FILE ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("epochs: three\n", ["'epochs'", "an integer", "'three'"]),
    ("epochs: 2.7\n", ["'epochs'", "an integer", "2.7"]),  # not 3 epochs
    ("epochs: true\n", ["'epochs'", "an integer"]),
    ("augment: 'false'\n", ["'augment'", BOOL, "'false'"]),  # not augmentation on
    ("pretrained: 0\n", ["'pretrained'", BOOL]),
    ("model: [a, b]\n", ["'model'", "a string", "['a', 'b']"]),
    ("data: {x: 1}\n", ["'data'", "a string"]),
    ("lr: fast\n", ["'lr'", "a number or null", "'fast'"]),
    ("strategy: sideways\n", ["'strategy'", "one of linear-probe, full, gradual"]),
    ("patience: soon\n", ["'patience'", "an integer or null"]),
])
def test_finetune_config_file_values_are_typed(tmp_path, text, words):
    cfg, run = _file(tmp_path, text), tmp_path / "run"
    result = CliRunner().invoke(cli, ["finetune", str(tmp_path / "no-data"), "--config", str(cfg), "-o", str(run)])
    message = _one_line_error(result, str(cfg), *words)
    assert "dataset" not in message and not run.exists()  # refused before the dataset is even looked at


@pytest.mark.parametrize("command, text, words", [
    (["export"], "opset: x\n", ["'opset'", "an integer", "'x'"]),
    (["export"], "simplify: 'no'\n", ["'simplify'", BOOL]),
    (["tune"], "trials: many\n", ["'trials'", "an integer", "'many'"]),
    (["tune"], "sampler: bayes\n", ["'sampler'", "one of tpe, random, grid"]),
    (["prune"], "keep: [[x]]\n", ["'keep'", "a string or a list of strings", "[['x']]"]),
    (["prune"], "ratio: half\n", ["'ratio'", "a number or null"]),
])
def test_other_commands_type_their_config_files(tmp_path, command, text, words):
    cfg = _file(tmp_path, text)
    result = CliRunner().invoke(cli, [*command, str(tmp_path / "missing"), "--config", str(cfg)])
    _one_line_error(result, str(cfg), *words)


@click.command()
@options_from(FinetuneConfig, PruneConfig, skip=("data",))
def echo(values, given):
    click.echo(json.dumps({k: values[k] for k in sorted(given)}))


@pytest.mark.parametrize("text, expected", [
    ("lr: 1e-3\n", {"lr": 0.001}),  # YAML 1.1 reads 1e-3 (no dot) as a string
    ("lr: '1e-3'\n", {"lr": 0.001}),
    ("lr: null\npatience: null\n", {"lr": None, "patience": None}),
    ("keep: conv_head\n", {"keep": ["conv_head"]}),  # one name, not nine letters
    ("keep: [conv_head, conv_stem]\n", {"keep": ["conv_head", "conv_stem"]}),
    ("augment: false\nwarmup_epochs: 1\n", {"augment": False, "warmup_epochs": 1}),
])
def test_config_file_values_accepted_and_converted(tmp_path, text, expected):
    result = CliRunner().invoke(echo, ["--config", str(_file(tmp_path, text))])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected


# -- the Python API: constructors, build, from_dict, settings ----------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: FinetuneConfig(data=".", epochs="three"), ["FinetuneConfig", "'epochs'", "an integer"]),
    (lambda: FinetuneConfig(data=".", augment="false"), ["'augment'", BOOL]),
    (lambda: FinetuneConfig(data=".", model=["a", "b"]), ["'model'", "a string"]),
    (lambda: TuneConfig(data=".", trials="many"), ["TuneConfig", "'trials'", "an integer"]),
    (lambda: PruneConfig(keep=[["x"]]), ["PruneConfig", "'keep'", "a list of strings"]),
    (lambda: build(FinetuneConfig, {"epochs": 2.7}, data="."), ["'epochs'", "an integer", "2.7"]),
    (lambda: FinetuneConfig.from_dict({"data": ".", "epochs": "3"}), ["recorded", "'epochs'", "an integer"]),
    (lambda: FinetuneConfig.from_dict({"data": ".", "epoch": 3}), ["unknown option 'epoch'", "epochs"]),
    (lambda: FinetuneConfig.from_dict({"epochs": 3}), ["'data' is required"]),
])
def test_library_constructors_check_types(make, words):
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_library_conversions():
    from edgetl.config import convert_value

    assert PruneConfig(keep="conv_head").keep == ("conv_head",)
    assert PruneConfig(ratio=0.5, layer_ratio={"conv_head": "0.2"}).layer_ratio == ("conv_head=0.2",)
    assert FinetuneConfig(data=Path("x"), lr="1e-3").data == "x" and FinetuneConfig(data=".", lr="1e-3").lr == 0.001
    assert convert_value(tuple[int, ...], 1, "batch_sizes") == (1,)
    for tp, bad in ((int, 2.0), (int, "3"), (bool, "true"), (bool, 1), (float, "nan"), (str, True), (str, None)):
        with pytest.raises(ConfigError, match="^x must be"):
            convert_value(tp, bad, "x")


def test_from_dict_reads_every_manifest_edgetl_wrote():
    # the options of the first FinetuneConfig (no field was ever removed; later ones take their defaults)
    oldest = {"data": "d", "output": "runs/d", "model": "efficientnet_lite0", "weights": None, "pretrained": True,
              "strategy": "full", "epochs": 10, "batch_size": 32, "lr": None, "backbone_lr_scale": 0.1,
              "optimizer": "adamw", "weight_decay": 0.01, "label_smoothing": 0.1, "warmup_epochs": 1.0,
              "augment": True, "cache_features": True, "patience": 5, "val": None, "val_fraction": 0.2,
              "image_size": None, "seed": 0, "workers": 1, "threads": None, "strict": False,
              "save_every_epoch": False}
    assert FinetuneConfig.from_dict(oldest).to_dict() == {**FinetuneConfig(data="d").to_dict(), **oldest}
    current = FinetuneConfig(data="d", epochs=3, lr=0.01, ema=0.99, freeze_bn=False)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(current.to_dict()))) == current


def test_settings_blocks_are_typed():
    from edgetl.compress.quantize.ort_qdq import QDQSettings
    from edgetl.toolchains.trt_settings import EngineSettings

    with pytest.raises(ConfigError, match="jetson.yaml: engine setting 'max_batch' must be an integer, got '8'"):
        EngineSettings.from_dict({"max_batch": "8"}, "jetson.yaml")
    with pytest.raises(ConfigError, match="'gpu_fallback' must be true or false"):
        settings_from_dict(EngineSettings, {"gpu_fallback": "no"}, "x.yaml", "engine setting")
    assert QDQSettings.from_dict({"keep_float": "classifier"}).keep_float == ("classifier",)


def test_target_profiles_are_typed(tmp_path, monkeypatch):
    from edgetl import profiles

    base = {"name": "x", "runtime": "openvino", "device": "CPU"}
    assert profiles.TargetProfile.from_dict({**base, "precisions": "fp32"}).precisions == ("fp32",)
    with pytest.raises(TargetError, match="'precisions' must be a string or a list of strings"):
        profiles.TargetProfile.from_dict({**base, "precisions": [["fp32"]]})
    aliased = _file(tmp_path, "name: x\nruntime: openvino\ndevice: &d CPU\nprecisions: [fp32]\nhardware: {d: *d}\n",
                    "x.yaml")
    monkeypatch.setattr(profiles, "_profile_files", lambda: {"x": aliased})
    with pytest.raises(TargetError, match="x.yaml: YAML anchor &d at line 3"):
        profiles.load_target("x")


# -- search spaces ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space, words", [
    ({"lr": {"low": 1e-4, "high": 1e-2, "log": "false"}}, ["lr: log", BOOL, "'false'"]),  # not a log scale
    ({"epochs": {"low": 1, "high": "ten"}}, ["epochs: high", "an integer"]),
    ({"model": ["a", "b"]}, ["model", "a string"]),
    ({"augment": {"choices": ["false", True]}}, ["augment", BOOL]),
])
def test_space_values_are_typed(space, words):
    from edgetl.tune import parse_space

    with pytest.raises(ConfigError) as err:
        parse_space(space, "s.yaml")
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_space_numeric_strings_become_numbers():
    from edgetl.tune import parse_space

    space = parse_space({"lr": {"choices": ["1e-3", 0.01]}, "weight_decay": "1e-4"})
    assert space.params[0].choices == (0.001, 0.01) and space.fixed == {"weight_decay": 0.0001}


# -- YAML aliases ----------------------------------------------------------------------------------------------
def test_alias_bomb_in_a_search_space_is_refused_at_once(tmp_path):
    bomb = _bomb(tmp_path)
    code = "from edgetl.tune.space import load_space; import sys; load_space(sys.argv[1])"
    try:  # the old loader expanded it past 2 GB and never answered: a bound, not a measurement
        done = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb was expanded instead of refused")
    assert done.returncode != 0 and "ConfigError" in done.stderr and "anchor &a0 at line 3" in done.stderr
    result = CliRunner().invoke(cli, ["tune", str(tmp_path), "--space", str(bomb), "-o", str(tmp_path / "study")])
    _one_line_error(result, str(bomb), "anchors and aliases are refused")
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("text", ["lr: &x 0.1\nweight_decay: *x\n", "keep: !!python/tuple [a]\n"])
def test_config_files_refuse_aliases_and_tags(tmp_path, text):
    cfg = _file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config_file(cfg)
    assert str(cfg) in str(err.value) and "\n" not in str(err.value)
    result = CliRunner().invoke(cli, ["finetune", str(tmp_path), "--config", str(cfg)])
    _one_line_error(result, str(cfg))
