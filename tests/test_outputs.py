"""Outputs outside a run's stages (package, bench, compile, tune -o): a new path, or edgetl's own output, never
anything else, never the dataset (issue 21). Each case is typed as a user would, against a decoy tree whose
checksums must not change; and a refused --overwrite of a run leaves no staging folder behind."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_image_folder

from edgetl.cli import cli
from edgetl.run.manifest import Manifest

FAST_BENCH = ["--batch", "1", "--warmup", "1", "--iterations", "2", "--rounds", "1", "--no-memory",
              "--runtime", "onnxruntime"]
TINY = ["--model", "mobilenet_v3_small", "--no-pretrained", "--image-size", "32", "--epochs", "1", "--workers", "0"]


def invoke(*args) -> tuple[int, list[str]]:
    """Exit code and ``error:`` lines; an exception other than the CLI's one-line exit fails the test."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, [line for line in result.output.splitlines() if line.startswith("error:")]


def refused(*args, words: tuple[str, ...]) -> None:
    code, errors = invoke(*args)
    assert code == 1 and len(errors) == 1, (code, errors)
    for word in words:
        assert word in errors[0], errors[0]


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), lock files left out."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts)
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory) -> Path:
    """The tiny run built for jetson fp32 (a float ONNX export: no OpenVINO, no TensorRT needed)."""
    from edgetl.build import TargetBuildConfig, build_target

    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("outputs") / "run",
                               ignore=shutil.ignore_patterns(".locks", "bench", "bundle-*")))
    build_target(run, TargetBuildConfig(target="jetson", precision="fp32", latency_runs=0, sensitivity_images=0))
    return run


@pytest.fixture
def run(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "run", ignore=shutil.ignore_patterns(".locks")))


@pytest.fixture
def decoys(tmp_path, run) -> dict[str, Path]:
    """What a user keeps next to runs: a thesis folder, a photo, another run's manifest, a non-bundle archive."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "thesis.txt").write_text("three years of work")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "other-run").mkdir()
    shutil.copyfile(run / "edgetl.json", tmp_path / "other-run" / "edgetl.json")
    with tarfile.open(tmp_path / "backup.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "v", arcname="v")
    return {"folder": tmp_path / "v", "photo": tmp_path / "photo.jpg", "manifest": tmp_path / "other-run" /
            "edgetl.json", "archive": tmp_path / "backup.tar.gz"}


def data_root(run: Path) -> Path:
    return Path(Manifest.load(run).data["dataset"]["root"])


def test_package_replaces_only_what_edgetl_wrote(run, decoys, tmp_path):
    before = {name: tree(path) for name, path in decoys.items()}
    package = ("package", run, "--target", "jetson")
    for flags in ((), ("--overwrite",)):
        refused(*package, "--dir", "-o", decoys["folder"], *flags, words=("v exists and is not an edgetl bundle",))
        for name in ("photo", "manifest", "archive"):
            refused(*package, "-o", decoys[name], *flags, words=(str(decoys[name]), "is not an edgetl bundle archive"))
        refused(*package, "-o", decoys["folder"], *flags, words=("is a folder",))  # was an IsADirectoryError
        refused(*package, "--dir", "-o", decoys["photo"], *flags, words=("is a file, not a folder",))
        refused(*package, "-o", decoys["photo"] / "b.tar.gz", *flags, words=("is a file, not a folder",))
    run_before = tree(run)
    refused(*package, "--dir", "-o", run, "--overwrite", words=("is not an edgetl bundle folder",))
    assert tree(run) == run_before
    assert {name: tree(path) for name, path in decoys.items()} == before


def test_package_never_writes_into_the_dataset(run):
    root = data_root(run)
    before, made = tree(root), [root / "cats" / "bundle.tar.gz", root / "bundle", root / "cats" / "bundle"]
    try:
        refused("package", run, "--target", "jetson", "-o", made[0], words=("is inside the dataset",))
        refused("package", run, "--target", "jetson", "--dir", "-o", made[1], words=("is inside the dataset",))
        refused("package", run, "--target", "jetson", "--dir", "-o", root, "--overwrite", words=("holds the dataset",))
        refused("package", run, "--target", "jetson", "--dir", "-o", made[2], words=("is inside the dataset",))
        assert tree(root) == before
    finally:  # the shared tiny dataset stays clean even when this test fails
        for path in made:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def test_package_reruns_and_overwrite_of_its_own_bundles(run, tmp_path):
    package = ("package", run, "--target", "jetson")
    assert invoke(*package)[0] == 0 and invoke(*package)[0] == 0  # the default place: a rerun replaces it
    assert (run / "bundle-jetson-fp32.tar.gz").is_file()
    assert invoke(*package, "--dir")[0] == 0 and invoke(*package, "--dir")[0] == 0
    for flags in ((), ("--dir",)):
        out = tmp_path / ("b" + "".join(flags))
        assert invoke(*package, *flags, "-o", out)[0] == 0
        refused(*package, *flags, "-o", out, words=("already holds an edgetl bundle", "--overwrite"))
        assert invoke(*package, *flags, "-o", out, "--overwrite")[0] == 0
    assert (tmp_path / "b--dir" / "bundle.json").is_file() and tarfile.is_tarfile(tmp_path / "b")


def test_bench_output_is_new_or_edgetl_reports(run, decoys, tmp_path):
    mine = tmp_path / "my-reports"
    mine.mkdir()
    (mine / "report.json").write_text('{"kind": "my own"}')
    (mine / "report.md").write_text("# my notes")
    watched = {**decoys, "mine": mine}
    before = {name: tree(path) for name, path in watched.items()}
    bench = ("bench", run, *FAST_BENCH)
    for flags in ((), ("--overwrite",)):
        refused(*bench, "-o", mine, *flags, words=("is not an edgetl bench report folder",))
        refused(*bench, "-o", decoys["folder"], *flags, words=("is not an edgetl bench report folder",))
        refused(*bench, "-o", decoys["photo"], *flags, words=("is a file, not a folder",))
        refused(*bench, "-o", data_root(run) / "reports", *flags, words=("is inside the dataset",))
    assert {name: tree(path) for name, path in watched.items()} == before
    assert not (data_root(run) / "reports").exists()
    assert invoke(*bench, "-o", tmp_path / "b")[0] == 0
    refused(*bench, "-o", tmp_path / "b", words=("already holds an edgetl bench report folder", "--overwrite"))
    assert invoke(*bench, "-o", tmp_path / "b", "--overwrite")[0] == 0
    assert invoke(*bench)[0] == 0 and invoke(*bench)[0] == 0  # RUN/bench: a rerun replaces it


def test_compile_output_is_new_or_an_engine_edgetl_built(run, decoys, tmp_path, monkeypatch):
    """Refused before TensorRT is even looked for; an engine whose fingerprint matches it is edgetl's."""
    from edgetl.backends import tensorrt as trt_backend
    from edgetl.errors import MissingBackendError

    def no_tensorrt():
        raise MissingBackendError("tensorrt", "tensorrt", "TensorRT engines", required="10.0")

    monkeypatch.setattr(trt_backend, "import_tensorrt", no_tensorrt)
    export = Path(shutil.copytree(run / "jetson" / "fp32", tmp_path / "export"))
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"PLAN old")
    (tmp_path / "old.engine.json").write_text(
        f'{{"engine": "old.engine", "engine_sha256": "{hashlib.sha256(b"PLAN old").hexdigest()}"}}')
    lone = tmp_path / "lone.engine"
    (tmp_path / "lone.layers.json").write_text("[]")  # a file of that name, not written by a compile
    watched = {**decoys, "lone": tmp_path / "lone.layers.json", "run": run}
    before = {name: tree(path) for name, path in watched.items()}
    for flags in ((), ("--overwrite",)):
        for name in ("photo", "manifest", "archive"):
            refused("compile", export, "--output", decoys[name], *flags, words=("is not an edgetl TensorRT engine",))
        refused("compile", export, "--output", lone, *flags, words=("lone.layers.json exists and is not an edgetl",))
        refused("compile", run, "--target", "jetson", "--output", run / "edgetl.json", *flags,
                words=("is not an edgetl TensorRT engine",))
    assert {name: tree(path) for name, path in watched.items()} == before
    refused("compile", export, "--output", engine, words=("already holds an edgetl TensorRT engine", "--overwrite"))
    refused("compile", export, "--output", engine, "--overwrite", words=("tensorrt is required",))  # claimed


def test_tune_output_is_new_or_a_study(run, decoys, tmp_path):
    pytest.importorskip("optuna")
    data = make_image_folder(tmp_path / "data", per_class=4)
    space = tmp_path / "space.yaml"
    space.write_text("model: mobilenet_v3_small\npretrained: false\nimage_size: 32\nepochs: 1\nworkers: 0\n")
    watched = {**decoys, "data": data, "run": run}
    before = {name: tree(path) for name, path in watched.items()}
    tune = ("tune", data, "--space", space, "--trials", "1")
    refused(*tune, "-o", decoys["folder"], words=("is not an edgetl tune study folder",))
    refused(*tune, "-o", run, words=("is not an edgetl tune study folder",))
    refused(*tune, "-o", decoys["photo"], words=("is a file, not a folder",))
    refused(*tune, "-o", data / "study", words=("is inside the dataset",))
    assert {name: tree(path) for name, path in watched.items()} == before
    assert not (data / "study").exists()


def test_refused_overwrite_of_a_run_leaves_nothing_behind(built, image_folder, tmp_path):
    """A run that is training cannot be replaced: refused before anything is staged beside it."""
    from edgetl.run.lock import StageLock

    old = Path(shutil.copytree(built, tmp_path / "runs" / "old", ignore=shutil.ignore_patterns(".locks")))
    before = tree(old)
    with StageLock(old, "finetune"):  # what a training process holds
        refused("finetune", image_folder, *TINY, "-o", old, "--overwrite", words=("being written by another",))
    assert tree(old) == before
    assert sorted(p.name for p in old.parent.iterdir()) == ["old"]  # no .edgetl-new-* staging folder


def test_overwrite_needs_a_real_manifest_not_a_file_named_edgetl_json(image_folder, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "edgetl.json").write_text("my own settings")
    (keep / "notes.txt").write_text("precious")
    before = tree(keep)
    refused("finetune", image_folder, *TINY, "-o", keep, "--overwrite", words=("is not an edgetl run folder",))
    assert tree(keep) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "keep"]


def test_demo_never_writes_over_a_folder_that_is_not_its_digits(tmp_path: Path):
    """`edgetl demo -o runs/demo` writes runs/demo-data/digits: a user's folder there is left alone."""
    from edgetl.demo import write_digits_folder
    from edgetl.errors import ConfigError

    mine = tmp_path / "demo-data" / "digits"
    mine.mkdir(parents=True)
    (mine / "thesis.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not the demo's digits folder"):
        write_digits_folder(mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"] and (mine / "thesis.txt").read_text() == "x"
    assert sorted(p.name for p in (tmp_path / "demo-data").iterdir()) == ["digits"]  # no .partial left
