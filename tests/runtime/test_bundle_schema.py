"""bundle.json validated before any use, archives checked member by member before they are unpacked, and a
file that is not a bundle: each refused in one line by `edgetl predict` and `python -m edgetl.runtime`
(issue 21). Bundles are the hand-made ONNX ones of conftest.py (16 px input, 2 classes)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.errors import BundleError
from edgetl.runtime import load
from edgetl.runtime import bundle as bundle_module
from edgetl.runtime.cli import main as runtime_main

from .conftest import SIZE

ARCNAME = "bundle-test-fp32"


@pytest.fixture
def image(colour_images) -> Path:
    return colour_images / "cats" / "0.png"


@pytest.fixture
def spy(monkeypatch, tmp_path) -> dict[str, list]:
    """Records every extraction, and sends the runtime's temporary folders to ``tmp_path/tmp``."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    calls: dict[str, list] = {"extractall": []}
    real = tarfile.TarFile.extractall

    def extractall(self, *args, **kwargs):
        calls["extractall"].append(self.name)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    return calls


def refused_everywhere(bundle: Path, image: Path, capsys, *words: str) -> str:
    """`edgetl predict` and `python -m edgetl.runtime predict` both exit non-zero with one `error:` line holding
    ``words`` (an exception other than the CLI's one-line exit fails); returns that line."""
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(image)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    capsys.readouterr()
    assert runtime_main(["predict", str(bundle), str(image)]) != 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and not captured.out, captured
    assert "Traceback" not in lines[0] and captured.err.strip() == lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def edit(root: Path, **changes) -> Path:
    """bundle.json of ``root`` with top-level keys replaced (a value None removes the key)."""
    meta = json.loads((root / "bundle.json").read_text())
    meta.update(changes)
    (root / "bundle.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return root


def rewrite(root: Path, rel: str, text: str) -> None:
    """A bundle file rewritten with its new sha256 in bundle.json (a consistent edit, not a tampering)."""
    (root / rel).write_text(text)
    meta = json.loads((root / "bundle.json").read_text())
    meta["files"][rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    (root / "bundle.json").write_text(json.dumps(meta))


def preprocessing(**changes) -> dict:
    return {"input_size": SIZE, "resize_size": 18, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
            "channel_order": "RGB", "layout": "NCHW", **changes}


def sizes(root: Path) -> dict[str, int]:
    return {rel: (root / rel).stat().st_size for rel in json.loads((root / "bundle.json").read_text())["files"]}


# -- bundle.json fields ---------------------------------------------------------------------------
BAD_FIELDS = {
    "one label, two outputs": (dict(labels=["cats"]), ('"labels"', "labels.txt")),
    "labels a string": (dict(labels="catsdogs"), ('"labels"', "list of class names")),
    "labels swapped": (dict(labels=["dogs", "cats"]), ('"labels"', "labels.txt", '["cats", "dogs"]')),
    "labels not strings": (dict(labels=[1, 2]), ('"labels"',)),
    "preprocessing a string": (dict(preprocessing="x"), ('"preprocessing"', "object")),
    "input_size 64 on a 16 px model": (dict(preprocessing=preprocessing(input_size=64, resize_size=72)),
                                       ('"preprocessing.input_size"', "64", "input.shape")),
    "input_size a string": (dict(preprocessing=preprocessing(input_size="16")), ('"preprocessing.input_size"',)),
    "resize below the crop": (dict(preprocessing=preprocessing(resize_size=12)), ('"preprocessing.resize_size"',)),
    "mean in 0..255": (dict(preprocessing=preprocessing(mean=[123.7, 116.3, 103.5])), ('"preprocessing.mean"',)),
    "std zero": (dict(preprocessing=preprocessing(std=[0.5, 0, 0.5])), ('"preprocessing.std"',)),
    "mean of two": (dict(preprocessing=preprocessing(mean=[0.5, 0.5])), ('"preprocessing.mean"',)),
    "no mean": (dict(preprocessing={k: v for k, v in preprocessing().items() if k != "mean"}),
                ('"preprocessing.mean"',)),
    "bad interpolation": (dict(preprocessing=preprocessing(interpolation="lanczos")),
                          ('"preprocessing.interpolation"',)),
    "BGR": (dict(preprocessing=preprocessing(channel_order="BGR")), ('"preprocessing.channel_order"',)),
    "input a list": (dict(input=[1, 3, 16, 16]), ('"input"',)),
    "input shape of 3": (dict(input={"name": "input", "shape": [3, SIZE, SIZE]}), ('"input.shape"',)),
    "output shape of 3 classes": (dict(output={"name": "logits", "shape": [1, 3]}), ('"labels"', "3 classes")),
    "unknown runtime": (dict(runtime="pytorch"), ('"runtime"', "onnxruntime")),
    "task": (dict(task="detection"), ('"task"',)),
    "runner options a list": (dict(model={"file": "model/model.onnx", "runner_options": ["threads"]}),
                              ('"model.runner_options"',)),
    "source a string": (dict(source="somewhere"), ('"source"',)),
    "sizes a list": (dict(sizes=[1, 2]), ('"sizes"',)),
}


@pytest.mark.parametrize("changes, words", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_bundle_json_field_is_refused_naming_it(onnx_bundle, image, capsys, changes, words):
    edit(onnx_bundle, **changes)
    for verify in (True, False):  # the schema is checked even when the sha256 checks are skipped
        with pytest.raises(BundleError, match="bundle.json of"):
            load(onnx_bundle, verify=verify)
    refused_everywhere(onnx_bundle, image, capsys, *words)


def test_input_size_60000_is_refused_before_any_image_is_read(onnx_bundle, tmp_path, capsys):
    # the image does not decode: code that resized it first would fail on it (not on the bundle) without
    # trying to allocate a 60000 px image
    broken = tmp_path / "bee.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    edit(onnx_bundle, preprocessing=preprocessing(input_size=60000, resize_size=60000))
    refused_everywhere(onnx_bundle, broken, capsys, '"preprocessing.input_size"', "60000", "4096")


def test_files_entries_are_checked(onnx_bundle, image, capsys):
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    edit(onnx_bundle, files={**meta["files"], "labels.txt": "not-a-sha"})
    refused_everywhere(onnx_bundle, image, capsys, '"files.labels.txt"', "sha256")
    edit(onnx_bundle, files={k: v for k, v in meta["files"].items() if k != "labels.txt"})
    refused_everywhere(onnx_bundle, image, capsys, '"files"', "labels.txt")
    edit(onnx_bundle, files=meta["files"], sizes={"other.bin": 3})
    refused_everywhere(onnx_bundle, image, capsys, '"sizes.other.bin"', "does not list")


def test_label_count_against_the_loaded_model(onnx_bundle, image, capsys):
    """labels.txt and bundle.json agree on one class, bundle.json records no output shape: the model's
    own output width (2) is checked when it is loaded, before any prediction."""
    rewrite(onnx_bundle, "labels.txt", "cats\n")
    edit(onnx_bundle, labels=["cats"])
    for verify in (True, False):
        with pytest.raises(BundleError, match=r'"labels" has 1 name but the model model/model.onnx outputs 2'):
            load(onnx_bundle, verify=verify)
    refused_everywhere(onnx_bundle, image, capsys, '"labels"', "outputs 2 classes")


def test_label_count_against_the_logits_where_the_runner_cannot_tell(onnx_bundle, image, capsys, monkeypatch):
    monkeypatch.setattr("edgetl.runtime.model.model_io_dims", lambda runner: (None, None), raising=False)
    rewrite(onnx_bundle, "labels.txt", "cats\n")
    edit(onnx_bundle, labels=["cats"])
    with load(onnx_bundle) as model, pytest.raises(BundleError, match=r'"labels" has 1 name but .* shape \[1, 2\]'):
        model.predict(image)
    refused_everywhere(onnx_bundle, image, capsys, '"labels"', "logits of shape [1, 2]")


def test_input_size_against_the_loaded_model(onnx_bundle, image, capsys):
    """bundle.json says 20 px everywhere, the model takes 16 px: refused at load."""
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    edit(onnx_bundle, preprocessing=preprocessing(input_size=20, resize_size=22),
         input={**meta["input"], "shape": [1, 3, 20, 20]})
    with pytest.raises(BundleError, match=r'"input.shape" is \[1, 3, 20, 20\] but the model .* takes'):
        load(onnx_bundle, verify=False)
    refused_everywhere(onnx_bundle, image, capsys, '"input.shape"', "16")


def test_python_m_edgetl_runtime_one_line(onnx_bundle, image):
    edit(onnx_bundle, labels=["cats"])
    done = subprocess.run([sys.executable, "-m", "edgetl.runtime", "predict", str(onnx_bundle), str(image)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and not done.stdout, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and '"labels"' in done.stderr, done


def test_valid_bundles_still_load(onnx_bundle, image, tmp_path):
    """A bundle as the previous edgetl wrote it (no "sizes"), and one with correct sizes, folder and archive."""
    with load(onnx_bundle) as model:
        expected = model.predict(image).scores
    for with_sizes in (False, True):
        if with_sizes:
            edit(onnx_bundle, sizes=sizes(onnx_bundle))
        archive = tmp_path / f"b{with_sizes}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(onnx_bundle, arcname=ARCNAME)
        for source in (onnx_bundle, archive):
            with load(source) as model:
                assert model.predict(image).scores == expected
    flat = tmp_path / "flat.tar.gz"  # bundle.json at the top, as `tar czf flat.tar.gz -C BUNDLE .` writes it
    with tarfile.open(flat, "w:gz") as tar:
        tar.add(onnx_bundle, arcname=".")
    with load(flat) as model:
        assert model.predict(image).scores == expected


# -- archives -------------------------------------------------------------------------------------
def archive_with(folder: Path, path: Path, extra: list[tuple[str, bytes, int | None]] = ()) -> Path:
    """``folder`` as ``ARCNAME/...`` in a .tar.gz, then ``extra`` members (name, data, declared size: None
    for len(data); more than len(data) writes a header promising more than follows, as a crafted archive may)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(folder, arcname=ARCNAME)
        for name, data, declared in extra:
            info = tarfile.TarInfo(f"{ARCNAME}/{name}")
            info.size = len(data) if declared is None else declared
            if declared is None:
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.fileobj.write(info.tobuf(tar.format, tar.encoding, tar.errors) + data)
                tar.offset += len(info.tobuf(tar.format, tar.encoding, tar.errors)) + len(data)
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    return path


def test_unlisted_member_is_refused_before_extraction(onnx_bundle, image, tmp_path, capsys, spy):
    archive = archive_with(onnx_bundle, tmp_path / "b.tar.gz", [("extra.bin", b"\0" * 4096, None)])
    refused_everywhere(archive, image, capsys, f"'{ARCNAME}/extra.bin'", "does not list")
    assert spy["extractall"] == [] and not list((tmp_path / "tmp").iterdir())


def test_unlisted_gigabyte_is_refused_at_its_header(onnx_bundle, image, tmp_path, capsys, spy):
    """A member declaring 1 GiB (its data not even there): refused from its header, never read or written."""
    archive = archive_with(onnx_bundle, tmp_path / "b.tar.gz", [("huge.bin", b"\0" * 65536, 2**30)])
    assert archive.stat().st_size < 2**20
    refused_everywhere(archive, image, capsys, f"'{ARCNAME}/huge.bin'", "does not list")
    assert spy["extractall"] == [] and not list((tmp_path / "tmp").iterdir())


def test_member_of_another_size_than_recorded_is_refused(onnx_bundle, image, tmp_path, capsys, spy):
    recorded = sizes(onnx_bundle)
    edit(onnx_bundle, sizes={**recorded, "model/model.onnx": recorded["model/model.onnx"] + 1})
    archive = archive_with(onnx_bundle, tmp_path / "b.tar.gz")
    refused_everywhere(archive, image, capsys, "model/model.onnx", f"records {recorded['model/model.onnx'] + 1}")
    assert spy["extractall"] == []
    with pytest.raises(BundleError, match="model/model.onnx does not match its size"):  # the folder, verified
        load(onnx_bundle)


def test_total_size_cap(onnx_bundle, image, tmp_path, capsys, spy, monkeypatch):
    archive = archive_with(onnx_bundle, tmp_path / "b.tar.gz")
    total = sum(p.stat().st_size for p in onnx_bundle.rglob("*") if p.is_file())
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", total - 1, raising=False)
    refused_everywhere(archive, image, capsys, "would unpack to more than", f"{total - 1} bytes")
    assert spy["extractall"] == []
    with pytest.raises(BundleError, match="would unpack to more than"):
        load(archive, verify=False)
    load(archive, max_bytes=total).close()  # the cap can be raised for one bundle
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", total)
    load(archive).close()
    assert len(spy["extractall"]) == 2 and not list((tmp_path / "tmp").iterdir())


def test_bad_bundle_json_in_an_archive_is_refused_before_extraction(onnx_bundle, image, tmp_path, capsys, spy):
    edit(onnx_bundle, labels="catsdogs")
    archive = archive_with(onnx_bundle, tmp_path / "b.tar.gz")
    refused_everywhere(archive, image, capsys, '"labels"')
    assert spy["extractall"] == []


def test_duplicate_and_stray_members_are_refused(onnx_bundle, image, tmp_path, capsys, spy):
    meta = (onnx_bundle / "bundle.json").read_bytes()
    twice = archive_with(onnx_bundle, tmp_path / "twice.tar.gz", [("bundle.json", meta, None)])
    refused_everywhere(twice, image, capsys, "twice")
    stray = tmp_path / "stray.tar.gz"
    with tarfile.open(stray, "w:gz") as tar:
        tar.add(onnx_bundle, arcname=ARCNAME)
        info = tarfile.TarInfo("elsewhere/labels.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"x\ny\n"))
    refused_everywhere(stray, image, capsys, "'elsewhere/labels.txt'", "outside its bundle folder")
    assert spy["extractall"] == []


@pytest.mark.parametrize("name, data", [("bee.jpg", None), ("notes.txt", b"hello\nworld\n"), ("empty.tar.gz", b"")])
def test_a_file_that_is_not_an_archive_is_one_line(image, tmp_path, capsys, name, data):
    given = tmp_path / name
    given.write_bytes(image.read_bytes() if data is None else data)
    refused_everywhere(given, image, capsys, str(given), "not a readable bundle archive")


# -- edgetl package records the sizes ---------------------------------------------------------------
def test_package_records_sizes_and_the_model_input_is_checked(tiny_run, tmp_path, capsys):
    """A real `edgetl package` (jetson fp32: a float ONNX on ONNX Runtime): bundle.json's "sizes" are the
    files' sizes, the archive loads; a consistent 64 px bundle.json on the 32 px model is refused at load."""
    import shutil

    from edgetl.build import TargetBuildConfig, build_target

    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".locks", "bundle-*")))
    build_target(run, TargetBuildConfig(target="jetson", precision="fp32", latency_runs=0, sensitivity_images=0))
    result = CliRunner().invoke(cli, ["package", str(run), "--target", "jetson", "-o", str(tmp_path / "b.tar.gz")])
    assert result.exit_code == 0, result.output
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(tmp_path / "unpacked", filter="data")
    folder = tmp_path / "unpacked" / top
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["sizes"] == sizes(folder) and set(meta["sizes"]) == set(meta["files"])
    load(tmp_path / "b.tar.gz").close()
    size = meta["preprocessing"]["input_size"]
    edit(folder, preprocessing={**meta["preprocessing"], "input_size": 2 * size, "resize_size": 2 * size},
         input={**meta["input"], "shape": [1, 3, 2 * size, 2 * size]})
    with pytest.raises(BundleError, match=rf'"input.shape" is \[1, 3, {2 * size}, {2 * size}\] but the model'):
        load(folder)
