"""Checkpoints and symlinks (issue 21): every ``.pt`` read goes through one safe loader, and a run's files are
resolved in one place that refuses a symlink leaving the run folder; reproduced through the command line."""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgetl.cli import cli

REPO = Path(__file__).resolve().parents[2]
QUICK_BENCH = ["--iterations", "1", "--rounds", "1", "--warmup", "0", "--round-time", "0.01", "--min-iterations", "1",
               "--limit", "3"]
TINY = ["--model", "mobilenet_v3_small", "--image-size", "32", "--epochs", "1", "--workers", "0"]


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def refused(code: int, out: str, *words: str) -> str:
    """The single ``error:`` line of a refused command (no traceback, no torch advice), checked for ``words``."""
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code not in (0, None) and "Traceback" not in out, out
    assert len(errors) == 1, out
    assert "weights_only" not in out, out
    for word in words:
        assert word in errors[0], out
    return errors[0]


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".locks")))


# -- one safe loader --------------------------------------------------------------------------------


def _damaged(path: Path, kind: str, marker: Path) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "foreign":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"model": _Payload(marker)}, path)


@pytest.mark.parametrize("kind", ["truncated", "foreign", "malicious"])
def test_resume_refuses_a_damaged_foreign_or_malicious_last_pt(run: Path, tmp_path: Path, kind: str):
    marker = tmp_path / "pwned"
    _damaged(run / "checkpoints" / "last.pt", kind, marker)
    before = tree_digest(run)
    line = refused(*invoke("finetune", "--resume", run, "--epochs", "3"), "checkpoints/last.pt", "--resume")
    assert "edgetl training state" in line
    assert not marker.exists()
    assert tree_digest(run) == before


def test_the_malicious_payload_is_live(tmp_path: Path):
    """The payload the tests use does run when a file is unpickled without weights_only (so its absence means
    something)."""
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_weights_refuses_a_damaged_or_malicious_file(run: Path, image_folder: Path, tmp_path: Path, kind: str):
    marker, weights = tmp_path / "pwned", tmp_path / "weights.pt"
    shutil.copyfile(run / "checkpoint.pt", weights)
    _damaged(weights, kind, marker)
    out_dir = tmp_path / "out"
    refused(*invoke("finetune", image_folder, "-o", out_dir, "--weights", weights, *TINY), str(weights), "--weights")
    assert not marker.exists() and not out_dir.exists()


def test_export_refuses_a_malicious_checkpoint(run: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(marker), "model_name": "x", "num_classes": 3}, run / "checkpoint.pt")
    refused(*invoke("export", run, "--no-verify"), "checkpoint.pt", "cannot be read as an edgetl checkpoint")
    assert not marker.exists()


def test_shared_feature_cache_ignores_a_malicious_entry(tmp_path: Path, caplog):
    from edgetl.train.cache import SharedCache, feature_key

    marker, folder = tmp_path / "pwned", tmp_path / "cache"
    image = tmp_path / "0.png"
    image.write_bytes(b"x")
    samples = [(image, 0)]
    key = feature_key("digest", {}, samples)
    folder.mkdir()
    torch.save({"features": _Payload(marker)}, folder / f"features-{key}.pt")
    digest = hashlib.sha256((folder / f"features-{key}.pt").read_bytes()).hexdigest()
    (folder / f"features-{key}.json").write_text(json.dumps({"sha256": digest, "images": 1}))
    fresh = (torch.zeros(1, 2), torch.zeros(1))
    assert SharedCache(folder).features("digest", {}, samples, lambda: fresh) is fresh  # computed again
    assert not marker.exists() and "weights_only" not in caplog.text


def test_every_torch_load_is_the_safe_loader():
    """``torch.load`` is called in one place only: :func:`edgetl.models.load_torch_file`."""
    calls = []
    for path in sorted((REPO / "edgetl").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle"):
                owner = [f.name for f in functions if f.lineno <= node.lineno <= f.end_lineno]
                calls.append((path.relative_to(REPO).as_posix(), owner[-1] if owner else None))
    assert calls == [("edgetl/models.py", "load_torch_file")]


# -- symlinks and absolute paths, resolved in one place -----------------------------------------------


@pytest.fixture
def outside(run: Path, tmp_path: Path) -> Path:
    """A decoy folder outside the run: a secret, and identical copies of the run's ONNX and checkpoint."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    shutil.copyfile(run / "onnx" / "model.onnx", decoy / "model.onnx")
    shutil.copyfile(run / "checkpoint.pt", decoy / "checkpoint.pt")
    return decoy


@pytest.mark.parametrize("rel", ["onnx/model.onnx", "checkpoint.pt"])
@pytest.mark.parametrize("to", ["passwd", "copy"])
def test_a_symlink_leaving_the_run_is_refused(run: Path, outside: Path, tmp_path: Path, rel: str, to: str):
    link = run / rel
    link.unlink()
    link.symlink_to(outside / ("passwd" if to == "passwd" else Path(rel).name))
    before = tree_digest(outside)

    code, out = invoke("status", run)
    assert code == 4 and "Traceback" not in out, out
    assert re.search(rf"\bunsafe\b.*{re.escape(rel)}: a symlink leaving the run folder", out), out
    states = {s["stage"]: s for s in json.loads(invoke("status", run, "--json")[1])}
    stage = "onnx" if rel.startswith("onnx") else "finetune"
    assert states[stage]["state"] == "unsafe" and rel in states[stage]["files"]

    words = (str(link), "is a symlink leaving the run folder", "replace it with the file itself")
    refused(*invoke("bench", run, "-o", tmp_path / "bench", *QUICK_BENCH), *words)
    refused(*invoke("export", run, "--target", "intel-cpu"), *words)
    refused(*invoke("export", run, "--target", "intel-cpu", "--no-verify"), *words)
    assert not (tmp_path / "bench").exists() and not (run / "intel-cpu").exists()
    assert tree_digest(outside) == before


@pytest.mark.openvino
def test_package_refuses_a_built_file_that_is_a_symlink_leaving_the_run(run: Path, outside: Path, tmp_path: Path):
    code, out = invoke("export", run, "--target", "intel-cpu", "--precision", "fp32")
    assert code == 0, out
    weights = run / "intel-cpu" / "fp32" / "model.bin"
    shutil.copyfile(weights, outside / "model.bin")
    weights.unlink()
    weights.symlink_to(outside / "model.bin")
    before = tree_digest(outside)
    assert invoke("status", run)[0] == 4
    refused(*invoke("package", run, "--target", "intel-cpu", "-o", tmp_path / "bundle.tar.gz"), str(weights),
            "is a symlink leaving the run folder")
    assert not (tmp_path / "bundle.tar.gz").exists() and tree_digest(outside) == before


def test_a_symlinked_folder_leaving_the_run_is_refused(run: Path, outside: Path, tmp_path: Path):
    shutil.move(run / "onnx", tmp_path / "onnx-elsewhere")
    (run / "onnx").symlink_to(tmp_path / "onnx-elsewhere", target_is_directory=True)
    assert invoke("status", run)[0] == 4
    refused(*invoke("bench", run / "onnx" / "model.onnx", "-o", tmp_path / "bench", *QUICK_BENCH),
            str(run / "onnx"), "is a symlink leaving the run folder")


def test_a_symlink_inside_the_run_is_followed(run: Path, tmp_path: Path):
    onnx = run / "onnx" / "model.onnx"
    onnx.rename(run / "onnx" / "real.onnx")
    onnx.symlink_to("real.onnx")
    code, out = invoke("status", run)
    assert code == 0, out
    code, out = invoke("bench", run, "-o", tmp_path / "bench", *QUICK_BENCH)
    assert code == 0 and (tmp_path / "bench" / "report.json").is_file(), out


def test_an_absolute_path_inside_the_run_is_not_outside_it(run: Path):
    manifest = json.loads((run / "edgetl.json").read_text())
    artifacts = manifest["stages"]["onnx"]["artifacts"]
    artifacts[str(run.resolve() / "onnx" / "model.onnx")] = artifacts.pop("onnx/model.onnx")
    (run / "edgetl.json").write_text(json.dumps(manifest))
    code, out = invoke("status", run)
    assert code == 0 and "outside" not in out, out

    artifacts["/etc/passwd"] = artifacts.popitem()[1]
    (run / "edgetl.json").write_text(json.dumps(manifest))
    refused(*invoke("status", run), "'/etc/passwd', a path outside the run folder")
