"""ONNX export with dynamic batch, onnxslim simplification and a parity check against PyTorch.

The model is written to a temporary file, simplified and checked on real images; only a model
that passes replaces ``RUN/onnx/model.onnx``. A parity failure is an error, not a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._io import atomic_path
from .errors import ConfigError, ParityError
from .run.manifest import Manifest
from .run.stage import stage, verify_inputs

log = logging.getLogger(__name__)
STAGE = "onnx"
CHECKPOINT = "checkpoint.pt"
ONNX_FILE = "onnx/model.onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportConfig:
    """How the float ONNX model is produced and checked."""

    opset: int = 18
    """ONNX opset (TensorRT 10 and OpenVINO 2024+ read 17-18 well)."""
    dynamic_batch: bool = True
    """Leave the batch dimension symbolic (TensorRT then needs an optimization profile); else batch 1."""
    simplify: bool = True
    """Run onnxslim (constant folding, fusion of redundant nodes)."""
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    """torch.onnx exporter: the torch.export based one, or the legacy TorchScript tracer."""
    atol: float = 1e-4
    """Absolute tolerance: every logit must satisfy |ONNX - PyTorch| <= atol + rtol * max|PyTorch logit of that image|."""
    rtol: float = 2e-4
    """Relative tolerance: FP32 kernels of two runtimes differ by up to ~1e-4 of the logit scale on a
    fully fine-tuned deep net (summation order), which is not an export error."""
    parity_images: int | None = None
    """How many val images to check (None: all of them)."""
    data: str | None = None
    """Labelled folder for the parity check (default: the run's val split)."""

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"opset must be between 13 and 23, got {self.opset}")
        if self.exporter not in ("dynamo", "torchscript"):
            raise ConfigError(f"exporter must be dynamo or torchscript, not {self.exporter!r}")
        if self.atol <= 0 or self.rtol < 0:
            raise ConfigError("atol must be positive and rtol non-negative")


@dataclass
class ExportResult:
    path: Path
    metrics: dict[str, Any]


def export_onnx(run_dir: str | Path, config: ExportConfig | None = None, *, verify: bool = True) -> ExportResult:
    """Export ``RUN/checkpoint.pt`` to ``RUN/onnx/model.onnx`` and record it in the manifest.

    The checkpoint is checked against its recorded sha256 first (``verify=False`` skips that, for a
    checkpoint edited on purpose) and against the run's model and classes (always).
    """
    from .data import load_array, run_eval_samples
    from .models import load_run_model
    from .preprocessing import PreprocessSpec

    config = config or ExportConfig()
    manifest = Manifest.load(run_dir)
    run_dir = manifest.run_dir
    manifest.require("finetune", "finish (or --resume) fine-tuning before exporting")
    inputs = verify_inputs(manifest, [CHECKPOINT], verify=verify)
    model, _ = load_run_model(run_dir)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    samples = run_eval_samples(manifest, config.data)
    images, labels = load_array(samples, spec, config.parity_images)
    target = run_dir / "onnx" / "model.onnx"
    with stage(manifest, STAGE, asdict(config), inputs) as st:
        start = time.perf_counter()
        with atomic_path(target, suffix=".onnx") as tmp:
            torch_to_onnx(model, tmp, spec.input_size, config)
            export_s = time.perf_counter() - start
            if config.simplify:
                simplify_onnx(tmp)
            metrics = check_parity(model, tmp, images, config.atol, config.rtol,
                                   batch_size=16 if config.dynamic_batch else 1)
            metrics.update(export_s=round(export_s, 2), parity_labels_top1=float(
                (metrics.pop("_onnx_logits").argmax(1) == labels).mean()))
        st.artifact(target, runtime="onnxruntime", precision="fp32", format="onnx")
        st.metrics.update(metrics)
    log.info("wrote %s: max |ONNX - PyTorch| %.2e over %d images, top-1 agreement %.1f%%", target,
             metrics["max_abs_diff"], metrics["parity_images"], 100 * metrics["top1_agreement"])
    return ExportResult(target, metrics)


def torch_to_onnx(model: Any, path: Path, input_size: int, config: ExportConfig) -> None:
    """Write the float model as ONNX: NCHW float32 ``input`` -> ``logits``, batch symbolic if asked."""
    import contextlib
    import io
    import warnings

    import torch

    model.eval()
    example = torch.randn(2 if config.dynamic_batch else 1, 3, input_size, input_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if config.exporter == "dynamo":
            dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if config.dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, opset_version=config.opset,
                              external_data=False)
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if config.dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=config.opset)


def simplify_onnx(path: Path) -> None:
    import onnx
    import onnxslim

    model = onnxslim.slim(onnx.load(str(path)))
    onnx.save(model, str(path))


def check_parity(model: Any, onnx_path: Path, images: np.ndarray, atol: float, rtol: float = 0.0,
                 batch_size: int = 16) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on ``images``; raise :class:`ParityError` beyond tolerance.

    Top-1 must agree on every image except numerical ties: images whose two best PyTorch logits are
    closer than twice the largest observed difference (either answer is then equally right).
    """
    from .backends.onnxruntime import OnnxRuntimeRunner
    from .backends.torch_eager import TorchRunner

    reference = TorchRunner.from_module(model)
    with OnnxRuntimeRunner(onnx_path) as candidate:
        ref, out = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            ref.append(reference.infer(batch))
            out.append(candidate.infer(batch))
    ref_logits, onnx_logits = np.concatenate(ref), np.concatenate(out)
    diff = np.abs(ref_logits - onnx_logits)
    excess = diff - (atol + rtol * np.abs(ref_logits).max(axis=1, keepdims=True))
    flips = ref_logits.argmax(1) != onnx_logits.argmax(1)
    top2 = np.sort(ref_logits, axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= 2 * diff.max(axis=1)
    metrics = {"parity_images": int(len(images)), "max_abs_diff": float(diff.max()),
               "mean_abs_diff": float(diff.mean()), "max_ref_logit": float(np.abs(ref_logits).max()),
               "top1_agreement": float(1 - flips.mean()), "tie_flips": int((flips & ties).sum()),
               "atol": atol, "rtol": rtol, "_onnx_logits": onnx_logits}
    decisive = int((flips & ~ties).sum())
    if excess.max() > 0 or decisive:
        raise ParityError(f"ONNX output differs from PyTorch: max abs diff {metrics['max_abs_diff']:.3e} "
                          f"(allowed {atol:.0e} + {rtol:.0e} x the image's largest |logit|), {decisive} top-1 disagreement(s) over "
                          f"{len(images)} images; try --exporter torchscript or another --opset")
    return metrics
