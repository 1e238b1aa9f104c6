"""Options generated from the typed configs, and --config FILE for every command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.config import Opt, field_docs, options_from


@dataclasses.dataclass
class Toy:
    size: int = 3
    """How big."""
    fast: bool = True
    """Go fast."""
    mode: str = "a"


@click.command()
@options_from(Toy, custom={"mode": Opt(type=click.Choice(["a", "b"]))})
def toy(values, given):
    click.echo(json.dumps({"values": values, "given": sorted(given)}))


def run_toy(*args: str) -> dict:
    result = CliRunner().invoke(toy, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_field_docstrings_become_help():
    assert field_docs(Toy) == {"size": "How big.", "fast": "Go fast."}
    text = CliRunner().invoke(toy, ["--help"]).output
    assert "How big.  [default: 3]" in text and "--no-fast" in text and "Turn off: go fast." in text


def test_precedence_command_line_over_file_over_default(tmp_path: Path):
    assert run_toy()["values"] == {"size": 3, "fast": True, "mode": "a"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: 7\nfast: false\n")
    assert run_toy("--config", str(cfg))["values"] == {"size": 7, "fast": False, "mode": "a"}
    out = run_toy("--config", str(cfg), "--size", "9", "--mode", "b")
    assert out["values"] == {"size": 9, "fast": False, "mode": "b"} and out["given"] == ["fast", "mode", "size"]


@pytest.mark.parametrize("text,message", [
    ("iteration: 7\n", "unknown option 'iteration'. Did you mean: iterations"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("size: [\n", "is not valid YAML"),
])
def test_bad_config_files_are_one_line(tmp_path: Path, text: str, message: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--config", str(cfg)])
    assert result.exit_code == 1 and message in result.output, result.output
    # through the real CLI the error is one line
    assert "Traceback" not in result.output


def test_every_finetune_field_is_reachable_from_the_command_line():
    from edgetl.finetune import FinetuneConfig

    params = {p.name for p in cli.commands["finetune"].params}
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} - {"data"} <= params


def test_finetune_reads_its_config_file(split_folder: Path, tmp_path: Path):
    cfg = tmp_path / "best.yaml"
    cfg.write_text(f"data: {split_folder}\nmodel: mobilenet_v3_small\npretrained: false\nimage_size: 32\n"
                   "epochs: 3\nbatch_size: 8\nworkers: 0\nlabel_smoothing: 0.0\nwarmup_epochs: 0.5\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["finetune", "--config", str(cfg), "--epochs", "1", "-o", str(run)])
    assert result.exit_code == 0, result.output
    options = json.loads((run / "edgetl.json").read_text())["stages"]["finetune"]["options"]
    assert options["epochs"] == 1 and options["label_smoothing"] == 0.0 and options["warmup_epochs"] == 0.5
    assert options["model"] == "mobilenet_v3_small" and options["data"] == str(split_folder.resolve())


def test_export_target_says_what_it_reuses_and_reexports_when_options_differ(tiny_run: Path, tmp_path: Path):
    import shutil

    pytest.importorskip("openvino")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".locks", "bench"))
    result = CliRunner().invoke(cli, ["export", str(run), "--target", "intel-cpu", "--precision", "fp32"])
    assert result.exit_code == 0 and "reusing" in result.output and "opset 18" in result.output, result.output
    result = CliRunner().invoke(cli, ["export", str(run), "--target", "intel-cpu", "--precision", "fp32",
                                      "--opset", "17"])
    assert result.exit_code == 0 and "opset differ" in result.output, result.output
    assert json.loads((run / "edgetl.json").read_text())["stages"]["onnx"]["options"]["opset"] == 17
