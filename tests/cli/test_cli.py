"""The command line: help texts, one-line errors, and the commands the README shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import cli

REPO = Path(__file__).resolve().parents[2]


def test_version():
    from edgetl import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


# -- starting is light: no ML framework or runtime is imported until a command needs it ------------------
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "matplotlib", "optuna",
         "torch_pruning")
APPLY = ("from PIL import Image\nfrom edgetl.preprocessing import PreprocessSpec\n"
         "assert PreprocessSpec(input_size=32, resize_size=36).apply(Image.new('RGB', (50, 40))).shape == (3, 32, 32)")


@pytest.mark.parametrize("code", [
    pytest.param("import edgetl.cli", id="edgetl.cli"),
    pytest.param("import edgetl.run", id="edgetl.run"),
    pytest.param("import edgetl.config", id="edgetl.config"),
    pytest.param("import edgetl.build, edgetl.profiles", id="edgetl.build"),
    pytest.param(APPLY, id="preprocessing-apply"),  # the torch-free eval path of a deployed model
])
def test_entry_point_imports_no_heavy_library(code: str):
    probe = f"import sys\n{code}\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize("command", [[], ["finetune"], ["export"], ["bench"], ["models"], ["tune"], ["prune"]],
                         ids=lambda c: " ".join(["edgetl", *c, "--help"]))
def test_help_imports_no_heavy_library(command: list[str]):
    """``edgetl ... --help`` as a user runs it (the installed console script), with Python listing every
    module it imports (-X importtime)."""
    script = Path(sys.executable).with_name("edgetl")
    fallback = "import sys; from edgetl.cli import main; sys.argv[0] = 'edgetl'; sys.exit(main())"
    argv = [str(script)] if script.is_file() else [sys.executable, "-c", fallback]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([*argv, *command, "--help"], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert {"click", "edgetl"} <= imported  # the import list is really there
    assert sorted(imported & set(HEAVY)) == []


@pytest.mark.parametrize("args,message", [
    (["finetune", "/no/such/folder"], "error: dataset path does not exist: /no/such/folder"),
    (["export", "/no/such/run"], "error: run folder not found: /no/such/run"),
    (["finetune", "{data}", "--model", "resnet5O", "--no-pretrained"], "error: unknown model 'resnet5O'. Did you mean:"),
])
def test_bad_input_gives_one_line_error(args, message, image_folder: Path):
    args = [a.format(data=image_folder) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output


def test_finetune_then_export_via_cli(split_folder: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["finetune", str(split_folder), "-m", "mobilenet_v3_small", "--no-pretrained",
                                      "--image-size", "32", "--epochs", "1", "--workers", "0", "-o", str(run)])
    assert result.exit_code == 0, result.output
    assert re.search(r"val top-1 \d+\.\d+%", result.output)
    result = CliRunner().invoke(cli, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.0%" in result.output
    assert json.loads((run / "edgetl.json").read_text())["stages"]["onnx"]["status"] == "complete"


def test_doctor_json():
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    report = json.loads(result.output)
    assert report["runtimes"]["torch"]["installed"] and "isa" in report["cpu"]


def test_models_lists_offline_backbone():
    result = CliRunner().invoke(cli, ["models", "lite0"])
    assert "efficientnet_lite0" in result.output


def test_readme_commands_exist():
    """The README's two set-up commands are what .ci/run runs."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "edgetl demo" in readme and "pytest" in readme
    test_command = re.search(r"^(python -m pytest.*)$", readme, re.M).group(1)
    assert test_command in ci


@pytest.mark.slow
def test_demo_quick_runs_the_whole_pipeline(tmp_path: Path):
    from edgetl.demo import run_demo
    from edgetl.manifest import Manifest

    summary = run_demo(tmp_path / "runs" / "demo", quick=True, progress=False)
    manifest = Manifest.load(tmp_path / "runs" / "demo")
    for stage in ("finetune", "onnx", "intel-cpu:int8", "bench"):
        assert manifest.completed(stage), stage
    assert manifest.verify() == []
    assert summary["finetune"]["top1"] > 0.5  # digits: far above the 10% of chance after one epoch
    runtimes = {r["runtime"] for r in summary["bench"]["results"] if r["status"] == "ok"}
    assert runtimes == {"torch", "onnxruntime", "openvino"}


# -- one spelling per concept: old spellings still parse for one release, with a warning -------------------------
@pytest.mark.parametrize("command,old,new,dest,value", [
    ("prune", "--target-latency", "--max-latency", "target_latency", "0.6ms"),
    ("prune", "--target", "--latency-target", "target", "jetson"),
    ("tune", "--workers", "--jobs", "workers", "2"),
    ("bench", "--batch", "--batch-size", "batch_sizes", "1,8"),
    ("predict", "--batch", "--batch-size", "batch", "4"),
])
def test_renamed_options_still_parse_with_a_warning(command, old, new, dest, value, capsys):
    cmd = cli.commands[command]
    extra = ["SOURCE", "IMG"] if command == "predict" else []
    ctx = cmd.make_context(command, [*extra, f"{old}={value}"])
    assert str(ctx.params[dest]) == value
    assert f"warning: {old} is deprecated and will be removed in the next release: use {new}" in capsys.readouterr().err
    assert str(cmd.make_context(command, [*extra, new, value]).params[dest]) == value
    assert capsys.readouterr().err == ""


def test_export_build_options_need_a_target(tiny_run):
    result = CliRunner().invoke(cli, ["export", str(tiny_run), "--precision", "int8", "--max-drop", "1"])
    assert result.exit_code == 2
    assert "--max-drop, --precision apply only with --target (a target build)" in result.output


def test_tri_state_options_are_pairs():
    params = {p.name: p for p in cli.commands["compile"].params}
    for name in ("version_compatible", "sparse_weights"):
        flag = "--" + name.replace("_", "-")
        assert params[name].opts == [flag] and params[name].secondary_opts == ["--no-" + flag[2:]]
        for args, value in (([], None), ([flag], True), (["--no-" + flag[2:]], False)):
            assert cli.commands["compile"].make_context("compile", args).params[name] is value
