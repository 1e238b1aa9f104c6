"""NNCF's progress bars and log lines go to stderr: stdout carries only results."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import REPO, make_image_folder

# a tiny conv -> relu -> mean -> matmul OpenVINO model, quantized plainly and with accuracy control;
# the only line on stdout must be the script's own result
QUANTIZE_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from edgetl.compress.quantize import quantize_accuracy_control, quantize_ptq
from edgetl.preprocessing import PreprocessSpec

rng = np.random.default_rng(0)
x = ops.parameter([-1, 3, 32, 32], np.float32, name="input")
conv = ops.convolution(x, ops.constant(rng.normal(size=(8, 3, 3, 3)).astype(np.float32)), [1, 1], [1, 1], [1, 1],
                       [1, 1])
pooled = ops.reduce_mean(ops.relu(conv), ops.constant(np.array([2, 3])), keep_dims=False)
model = ov.Model([ops.matmul(pooled, ops.constant(rng.normal(size=(8, 3)).astype(np.float32)), False, False)], [x])
samples = [(path, 0) for path in sorted(Path(sys.argv[1]).rglob("*.png"))]
spec = PreprocessSpec(input_size=32, resize_size=32)
ptq = quantize_ptq(model, samples, spec)
images, labels = rng.normal(size=(6, 3, 32, 32)).astype(np.float32), rng.integers(0, 3, 6)
controlled = quantize_accuracy_control(model, samples, spec, images, labels, 0.0, max_iterations=1)
count = lambda m: sum(op.get_type_name() == "FakeQuantize" for op in m.get_ops())
print(f"fake-quantize {count(ptq)} {count(controlled)}")
"""


@pytest.mark.openvino
def test_nncf_progress_and_logs_stay_off_stdout(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    images = make_image_folder(tmp_path / "calib", classes=("cats", "dogs", "birds"), per_class=3, size=40)
    proc = subprocess.run([sys.executable, "-c", QUANTIZE_SCRIPT, str(images)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fake-quantize "), proc.stdout[-3000:]
    assert all(int(n) > 0 for n in lines[0].split()[1:])  # quantization really happened
    assert "Statistics collection" in proc.stderr and "INFO:nncf:" in proc.stderr  # still shown, on stderr


def test_setup_logging_moves_nncf_stdout_handler_to_stderr():
    script = ("import logging, sys\n"
              "logging.getLogger('nncf').addHandler(logging.StreamHandler(sys.stdout))\n"  # as NNCF does on import
              "logging.getLogger('nncf').propagate = False\n"
              "from edgetl._console import setup_logging\n"
              "setup_logging()\n"
              "logging.getLogger('nncf').warning('nncf says hello')\n"
              "print('result')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "result\n"
    assert "nncf says hello" in proc.stderr


def test_stdout_to_stderr_restores_stdout_and_handlers(capsys):
    from edgetl._console import stdout_to_stderr

    logger = logging.getLogger("edgetl-test-stdout")
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with stdout_to_stderr("edgetl-test-stdout"):
            print("progress")
            logger.warning("log line")
        out, err = capsys.readouterr()
        assert out == "" and "progress" in err and "log line" in err
        assert handler.stream is sys.stdout
        print("result")
        assert capsys.readouterr().out == "result\n"
    finally:
        logger.removeHandler(handler)
