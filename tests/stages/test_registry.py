"""Tests over the stage table: every stage has a command that takes every field of its config, a hint that is
a command line edgetl parses, and imports light."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.config import config_fields
from edgetl.run.keys import StageKey, StageKind
from edgetl.stages import STAGES, all_stages, lineage, rerun_hint, stage_for

REPO = Path(__file__).resolve().parents[2]
KINDS = list(STAGES)


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_each_stage_loads_as_its_kind(kind):
    stage = stage_for(kind)
    assert stage.kind is kind and stage.summary and stage.config is not None and callable(stage.run)


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_each_stage_command_takes_every_config_field(kind):
    stage = stage_for(kind)
    command = cli.commands[stage.command]
    params = {p.name for p in command.params}
    missing = sorted(set(config_fields(stage.config)) - params - {"target"} - {"data"})
    assert missing == [], f"edgetl {stage.command} has no option for {missing}"
    result = CliRunner().invoke(cli, [stage.command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[-1] in result.output, f"{param.opts[-1]} not in edgetl {stage.command} --help"


def test_every_command_of_the_table_is_registered_once():
    commands = {s.command for s in all_stages()}
    assert commands <= set(cli.commands)
    assert commands == {"finetune", "prune", "export", "compile", "bench", "tune", "package"}


@pytest.mark.parametrize("name", ["finetune", "prune", "onnx", "bench", "intel-cpu:int8", "jetson:int8:engine"])
def test_rerun_hints_are_command_lines_edgetl_parses(name, tmp_path):
    hint = rerun_hint(name, tmp_path / "run").removesuffix(" (on the device)")
    words = shlex.split(hint)
    assert words[0] == "edgetl"
    command = cli.commands[words[1]]
    args = [w if w not in ("DATA", "PARENT") else str(tmp_path) for w in words[2:]]
    command.make_context(words[1], args)  # raises on an unknown option or a bad choice
    key = StageKey.parse(name)
    if key.target:
        assert f"--target {key.target} --precision {key.precision}" in hint


def test_resume_goes_to_the_stage_that_made_the_run(tmp_path):
    from edgetl.run.manifest import Manifest

    fine = Manifest.create(tmp_path / "a", model={}, classes=["x"], preprocessing={})
    fine.save()
    pruned = Manifest.create(tmp_path / "b", model={}, classes=["x"], preprocessing={},
                             parent={"run": str(tmp_path / "a"), "stage": "prune"})
    pruned.save()
    trial = Manifest.create(tmp_path / "c", model={}, classes=["x"], preprocessing={},
                            parent={"study": str(tmp_path), "stage": "tune", "trial": 0})
    trial.save()
    assert [lineage(tmp_path / r) for r in "abc"] == [StageKind.FINETUNE, StageKind.PRUNE, StageKind.TUNE]
    assert stage_for(StageKind.PRUNE).resume_path == "edgetl.prune:resume"
    assert stage_for(StageKind.TUNE).resume_path == stage_for(StageKind.FINETUNE).resume_path
    with pytest.raises(Exception, match="cannot be resumed"):
        stage_for(StageKind.BENCH).resume(tmp_path / "a")


def test_reading_the_table_imports_no_framework():
    code = ("import sys\nfrom edgetl.stages import all_stages, rerun_hint\nall_stages()\n"
            "rerun_hint('jetson:int8', '.')\n"
            "print(' '.join(m for m in ('torch', 'onnx', 'openvino', 'optuna', 'torch_pruning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == ""
