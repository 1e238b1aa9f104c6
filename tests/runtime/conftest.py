"""A hand-made ONNX bundle (no torch, built in milliseconds) for the runtime's fast tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

SIZE = 16


def tiny_onnx(path: Path) -> Path:
    """input [N,3,16,16] -> channel means -> logits = [red - blue, blue - red]: red images are class 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1, -1], [0, 0], [-1, 1]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def write_bundle(root: Path, **overrides) -> Path:
    """A schema-1 bundle folder around :func:`tiny_onnx`, with every file's sha256."""
    (root / "model").mkdir(parents=True)
    tiny_onnx(root / "model" / "model.onnx")
    (root / "labels.txt").write_text("cats\ndogs\n")
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    meta = {"schema": 1, "task": "image-classification", "edgetl_version": "0.1.0", "created": "now",
            "target": "test", "precision": "fp32", "runtime": "onnxruntime",
            "model": {"file": "model/model.onnx", "precision_ran": "fp32", "key": "onnx/model.onnx"},
            "input": {"name": "input", "shape": [1, 3, SIZE, SIZE], "layout": "NCHW", "dtype": "float32",
                      "channel_order": "RGB"},
            "preprocessing": {"input_size": SIZE, "resize_size": 18, "mean": [0.5] * 3, "std": [0.5] * 3,
                              "interpolation": "bilinear", "channel_order": "RGB", "layout": "NCHW"},
            "output": {"name": "logits", "semantics": "logits", "scores": "softmax"},
            "labels": ["cats", "dogs"], "accuracy": None, "latency": None, "files": files, **overrides}
    (root / "bundle.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def onnx_bundle(tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle")


@pytest.fixture
def colour_images(tmp_path) -> Path:
    """``images/cats`` (reddish) and ``images/dogs`` (bluish), 4 PNGs each, 40 px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("cats", (200, 40, 40)), ("dogs", (40, 40, 200))):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    return tmp_path / "images"
