"""ONNX export with dynamic batch, onnxslim simplification and a parity check against PyTorch.

The model is written to a temporary file, simplified and checked on real images; only a model
that passes replaces ``RUN/onnx/model.onnx``. A parity failure is an error, not a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._io import atomic_path
from .errors import ConfigError, ParityError
from .run.keys import FINETUNE, ONNX, Precision
from .run.manifest import Manifest
from .run.stage import stage, verify_inputs

log = logging.getLogger(__name__)
STAGE = ONNX
CHECKPOINT = "checkpoint.pt"
ONNX_FILE = f"{ONNX}/model.onnx"
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
    parity_images: int | None = 256
    """How many val images to check, sampled class-balanced (None: all of them)."""
    data: str | None = None
    """Labelled folder for the parity check (default: the run's val split)."""

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"opset must be between 13 and 23, got {self.opset}")
        if self.exporter not in ("dynamo", "torchscript"):
            raise ConfigError(f"exporter must be dynamo or torchscript, not {self.exporter!r}")
        if self.atol <= 0 or self.rtol < 0:
            raise ConfigError("atol must be positive and rtol non-negative")
        if self.parity_images is not None and self.parity_images < 1:
            raise ConfigError(f"parity_images must be at least 1 (None: all), got {self.parity_images}")


@dataclass
class ExportResult:
    path: Path
    metrics: dict[str, Any]


def export_onnx(run_dir: str | Path, config: ExportConfig | None = None, *, verify: bool = True) -> ExportResult:
    """Export ``RUN/checkpoint.pt`` to ``RUN/onnx/model.onnx`` and record it in the manifest.

    The checkpoint is checked against its recorded sha256 first (``verify=False`` skips that, for a
    checkpoint edited on purpose) and against the run's model and classes (always).
    """
    from .data import EvalImages, balanced_sample, run_eval_samples
    from .models import load_run_model
    from .preprocessing import PreprocessSpec

    config = config or ExportConfig()
    manifest = Manifest.load(run_dir)
    run_dir = manifest.run_dir
    manifest.require(FINETUNE, "finish (or --resume) fine-tuning before exporting")
    inputs = verify_inputs(manifest, [CHECKPOINT], verify=verify)
    model, _ = load_run_model(run_dir)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    samples = run_eval_samples(manifest, config.data)
    if config.parity_images is not None and config.parity_images < len(samples):
        samples = sorted(balanced_sample(samples, config.parity_images))
    images = EvalImages(samples, spec)  # decoded a batch at a time by check_parity
    labels = images.labels
    target = run_dir / ONNX_FILE
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
        st.artifact(target, runtime="onnxruntime", precision=Precision.FP32, format="onnx")
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


def check_parity(model: Any, onnx_path: Path, images: Any, atol: float, rtol: float = 0.0,
                 batch_size: int = 16) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on ``images``; raise :class:`ParityError` beyond tolerance.

    ``images`` is an NCHW array or :class:`~edgetl.data.EvalImages` (decoded a batch at a time; the
    metrics accumulate per batch, only the ONNX logits are kept). Top-1 must agree on every image except
    numerical ties: images whose two best PyTorch logits are closer than twice that image's largest
    difference (either answer is then equally right).
    """
    from .backends.onnxruntime import OnnxRuntimeRunner
    from .backends.torch_eager import TorchRunner
    from .data import image_batches

    reference = TorchRunner.from_module(model)
    stats = ParityStats()
    with OnnxRuntimeRunner(onnx_path) as candidate:
        for batch in image_batches(images, batch_size):
            stats.add(reference.infer(batch), candidate.infer(batch), atol, rtol)
    metrics = {"parity_images": stats.images, "max_abs_diff": stats.max_diff,
               "mean_abs_diff": stats.sum_diff / max(stats.values, 1), "max_ref_logit": stats.max_ref,
               "top1_agreement": 1 - stats.flips / max(stats.images, 1), "tie_flips": stats.tie_flips,
               "atol": atol, "rtol": rtol, "_onnx_logits": np.concatenate(stats.logits)}
    decisive = stats.flips - stats.tie_flips
    if stats.excess > 0 or decisive:
        raise ParityError(f"ONNX output differs from PyTorch: max abs diff {metrics['max_abs_diff']:.3e} "
                          f"(allowed {atol:.0e} + {rtol:.0e} x the image's largest |logit|), {decisive} top-1 disagreement(s) over "
                          f"{stats.images} images; try --exporter torchscript or another --opset")
    return metrics


@dataclass
class ParityStats:
    """Parity figures accumulated batch by batch."""

    images: int = 0
    values: int = 0
    max_diff: float = 0.0
    sum_diff: float = 0.0
    max_ref: float = 0.0
    excess: float = -np.inf
    """Largest |ONNX - PyTorch| minus its allowance (positive: out of tolerance)."""
    flips: int = 0
    tie_flips: int = 0
    logits: list[np.ndarray] = field(default_factory=list)

    def add(self, ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> None:
        diff = np.abs(ref - out)
        allowed = atol + rtol * np.abs(ref).max(axis=1, keepdims=True)
        flips = ref.argmax(1) != out.argmax(1)
        top2 = np.sort(ref, axis=1)[:, -2:]
        ties = (top2[:, 1] - top2[:, 0]) <= 2 * diff.max(axis=1)
        self.images += len(ref)
        self.values += diff.size
        self.max_diff = max(self.max_diff, float(diff.max()))
        self.sum_diff += float(diff.sum(dtype=np.float64))
        self.max_ref = max(self.max_ref, float(np.abs(ref).max()))
        self.excess = max(self.excess, float((diff - allowed).max()))
        self.flips += int(flips.sum())
        self.tie_flips += int((flips & ties).sum())
        self.logits.append(out)


def needs_export(run_dir: str | Path, config: ExportConfig, changed: set[str]) -> str | None:
    """Why a target build must (re-)export the ONNX first (no export yet, a stale one, or ONNX options in
    ``changed`` that differ from the recorded ones), or None when the existing export serves."""
    manifest = Manifest.load(run_dir)
    if not manifest.completed(ONNX):
        return f"{manifest.run_dir} has no ONNX export yet: exporting it"
    from .run.integrity import stale_reason

    if stale := stale_reason(manifest, ONNX):
        return f"{manifest.run_dir / ONNX_FILE} is stale ({stale}): exporting it again"
    recorded = manifest.record(ONNX).options
    differ = sorted(k for k, v in asdict(config).items() if k in changed and k != "data" and recorded.get(k) != v)
    if differ:
        return f"exporting the ONNX again: {', '.join(differ)} differ from the existing export"
    return None
