"""``edgetl demo``: the whole pipeline on a dataset that needs no download.

The default data is scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) written
out as an image folder, so the demo runs offline on any machine; ``--data`` swaps in a real folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import MissingBackendError

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


def run_demo(output: str | Path = "runs/demo", *, data: str | Path | None = None, quick: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune the offline EfficientNet-Lite0, export and check ONNX, build the targets this machine
    can run, benchmark them, and print a summary table. Returns the summary rows."""
    from rich.table import Table

    from ._console import console
    from .export import export_onnx
    from .finetune import FinetuneConfig, finetune

    output = Path(output)
    if data is None:
        data = write_digits_folder(output.parent / "demo-data" / "digits")
        image_size, epochs = (64, 1) if quick else (96, 3)
    else:
        image_size, epochs = (96, 1) if quick else (None, 5)
    console.rule("[bold]1/3 fine-tune EfficientNet-Lite0 (offline ImageNet weights)")
    result = finetune(FinetuneConfig(data=str(data), output=str(output), strategy="full", epochs=epochs,
                                     image_size=image_size, workers=0), overwrite=True, progress=progress)
    console.rule("[bold]2/3 export to ONNX + parity check")
    exported = export_onnx(output)
    rows = [{"stage": "finetune (PyTorch)", "artifact": "checkpoint.pt", "val top-1 %": 100 * result.metrics["top1"],
             "detail": f"{result.metrics['epochs_run']} epochs, {result.wall_time_s:.0f} s"},
            {"stage": "export (ONNX)", "artifact": "onnx/model.onnx",
             "val top-1 %": 100 * exported.metrics["parity_labels_top1"],
             "detail": f"max |diff| {exported.metrics['max_abs_diff']:.1e}, "
                       f"agreement {100 * exported.metrics['top1_agreement']:.0f}%"}]
    console.rule("[bold]3/3 summary")
    table = Table(title=f"edgetl demo: {output}")
    for column in ("stage", "artifact", "val top-1 %", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["stage"], row["artifact"], f"{row['val top-1 %']:.2f}", row["detail"])
    console.print(table)
    return {"run_dir": str(output), "rows": rows}
