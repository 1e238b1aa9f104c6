"""The runtime on a hand-made ONNX bundle: predict, and every bad input refused in one line."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import BundleError, ConfigError, DatasetError, MissingBackendError
from edgetl.runtime import load
from edgetl.runtime.cli import expand_images, main


def test_predict_path_image_and_array(onnx_bundle, colour_images):
    with load(onnx_bundle) as model:
        red = colour_images / "cats" / "0.png"
        by_path = model.predict(red, top_k=2)
        assert by_path.label == "cats" and by_path.labels == ["cats", "dogs"] and by_path.source == str(red)
        assert by_path.scores[0] > by_path.scores[1] and abs(sum(by_path.scores) - 1) < 1e-6
        pil = model.predict(Image.open(red))
        array = model.predict(np.asarray(Image.open(red).convert("RGB")))
        assert pil.scores == pytest.approx(by_path.scores) == array.scores
        many = model.predict(expand_images([colour_images]), top_k=1, batch_size=3)
        assert [p.label for p in many] == ["cats"] * 4 + ["dogs"] * 4
        with pytest.raises(ConfigError, match="array input"):
            model.predict(np.zeros((5, 5), np.float32))


def test_archive_is_loaded_like_the_folder(onnx_bundle, colour_images, tmp_path):
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(onnx_bundle, arcname="bundle-test-fp32")
    image = colour_images / "dogs" / "1.png"
    with load(archive) as a, load(onnx_bundle) as b:
        assert a.predict(image).scores == b.predict(image).scores


def test_tampered_file_is_refused_naming_it(onnx_bundle):
    (onnx_bundle / "labels.txt").write_text("cats\nbirds\n")
    with pytest.raises(BundleError, match=r"labels\.txt does not match its sha256"):
        load(onnx_bundle)
    with pytest.raises(BundleError, match=r"model/model\.onnx is missing"):
        (onnx_bundle / "labels.txt").write_text("cats\ndogs\n")
        (onnx_bundle / "model" / "model.onnx").unlink()
        load(onnx_bundle)


def _bad_archive(path, name, kind=tarfile.REGTYPE, linkname=""):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        data = b"x" if kind == tarfile.REGTYPE else b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("name, kind, link, message", [
    ("../evil.txt", tarfile.REGTYPE, "", "leaving the bundle"),
    ("/etc/evil.txt", tarfile.REGTYPE, "", "absolute path"),
    ("b/bundle.json", tarfile.SYMTYPE, "/etc/passwd", "is a symlink"),
    ("b/model.onnx", tarfile.LNKTYPE, "../../x", "is a hard link"),
])
def test_unsafe_archives_are_refused(tmp_path, name, kind, link, message):
    archive = _bad_archive(tmp_path / "bad.tar.gz", name, kind, link)
    with pytest.raises(BundleError, match=message):
        load(archive)
    assert not (tmp_path / "evil.txt").exists()


def test_newer_schema_missing_and_malformed_bundle_json(tmp_path, onnx_bundle):
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    (onnx_bundle / "bundle.json").write_text(json.dumps({**meta, "schema": 2}))
    with pytest.raises(BundleError, match="newer edgetl.*schema 2"):
        load(onnx_bundle)
    (onnx_bundle / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="malformed"):
        load(onnx_bundle)
    (onnx_bundle / "bundle.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "labels"}))
    with pytest.raises(BundleError, match="missing labels"):
        load(onnx_bundle)
    files = {k: v for k, v in meta["files"].items() if k != "model/model.onnx"}
    (onnx_bundle / "bundle.json").write_text(json.dumps({**meta, "files": files}))
    with pytest.raises(BundleError, match="does not list the sha256 of its model"):
        load(onnx_bundle)
    (onnx_bundle / "bundle.json").unlink()
    with pytest.raises(BundleError, match="no bundle.json"):
        load(onnx_bundle)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load(tmp_path / "junk.tar.gz")


def test_undecodable_image_and_missing_runtime(onnx_bundle, tmp_path, monkeypatch):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with load(onnx_bundle) as model, pytest.raises(DatasetError, match="could not read .*broken.jpg"):
        model.predict(broken)
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingBackendError, match=r"pip install 'onnxruntime>="):
        load(onnx_bundle)
    assert meta["runtime"] == "onnxruntime"


def test_runtime_cli_predict_and_one_line_errors(onnx_bundle, colour_images, tmp_path, capsys):
    assert main(["predict", str(onnx_bundle), str(colour_images / "cats" / "*.png"), "--json", "--top-k", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 4 and {p["labels"][0] for p in out} == {"cats"}
    (onnx_bundle / "labels.txt").write_text("tampered\n")
    assert main(["predict", str(onnx_bundle), str(colour_images)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "labels.txt" in err and "\n" not in err
