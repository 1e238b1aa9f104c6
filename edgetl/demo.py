"""``edgetl demo``: the whole pipeline on a dataset that needs no download.

The default data is scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) written
out as an image folder, so the demo runs offline on any machine; ``--data`` swaps in a real folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingBackendError

log = logging.getLogger(__name__)


def write_digits_folder(root: str | Path, size: int = 32) -> Path:
    """scikit-learn's digits as ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (80/20 split)."""
    import numpy as np
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingBackendError("scikit-learn", None, "the built-in demo dataset") from exc
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    if root.exists() or root.is_symlink():  # never written over: it is not the demo's folder
        raise ConfigError(f"{root} exists and is not the demo's digits folder (train/ and val/): move it, or run "
                          "the demo with another --output")
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    n_val = len(order) // 5
    staging = root.with_name(root.name + ".partial")
    for rank, index in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = staging / split / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 8-bit gray
        Image.fromarray(255 - pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{index:04d}.png")
    staging.rename(root)
    return root


@dataclass
class DemoConfig:
    """What ``edgetl demo`` runs on."""

    output: str = "runs/demo"
    """Run folder of the demo."""
    data: str | None = None
    """Image folder to use instead of the built-in digits."""
    quick: bool = False
    """Fewer epochs and a smaller input size (a smoke test)."""


def run_demo(output: str | Path = "runs/demo", *, data: str | Path | None = None, quick: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune the offline EfficientNet-Lite0, export and check ONNX, build OpenVINO INT8 for this
    CPU (when OpenVINO is installed), benchmark every artifact, and print a summary table."""
    from ._console import console
    from .bench import SUMMARY_COLUMNS, BenchConfig, benchmark, render_table
    from .build import TargetBuildConfig, build_target
    from .export import export_onnx
    from .finetune import FinetuneConfig, finetune

    output = Path(output)
    if data is None:
        data = write_digits_folder(output.parent / "demo-data" / "digits")
        image_size, epochs = (64, 1) if quick else (96, 3)
    else:
        image_size, epochs = (96, 1) if quick else (None, 5)
    console.rule("[bold]1/4 fine-tune EfficientNet-Lite0 (offline ImageNet weights)")
    result = finetune(FinetuneConfig(data=str(data), output=str(output), strategy="full", epochs=epochs,
                                     image_size=image_size, workers=0), overwrite=True, progress=progress)
    console.rule("[bold]2/4 export to ONNX + parity check")
    export_onnx(output)
    console.rule("[bold]3/4 OpenVINO INT8 for this CPU (NNCF, calibrated on training images)")
    try:
        build_target(output, TargetBuildConfig(target="intel-cpu", precision="int8", calib_size=100 if quick else 300))
    except MissingBackendError as exc:
        log.warning("skipping the intel-cpu target: %s", exc)
    console.rule("[bold]4/4 benchmark every artifact")
    report = benchmark(output, BenchConfig(batch_sizes=(1,), rounds=2 if quick else 3, iterations=20,
                                           round_time_s=1.0 if quick else 2.0, memory=not quick), progress=progress)
    console.print(render_table(report.data, SUMMARY_COLUMNS))
    console.print(f"run folder: {output}   report: {report.files.get('html', output / 'bench')}")
    return {"run_dir": str(output), "finetune": result.metrics, "bench": report.data}
