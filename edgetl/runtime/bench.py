"""Latency (and, with labelled images, accuracy) of a bundle on the device itself, with the runtime alone.

The measuring is ``edgetl bench``'s own: :func:`edgetl.bench.measure.measure_artifacts` (the interleaved
rounds, :func:`~edgetl.bench.measure.latency_stats`) and the report assembled by
:func:`edgetl.bench.harness.measure_report`, so the
report.json has bench's schema, the device fingerprint, and the artifact's key in its run
(``intel-cpu/int8/model.xml``): ``edgetl bench RUN --compare THIS_REPORT`` puts the two side by side.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.config import BenchConfig
from ..errors import DatasetError
from .bundle import Bundle


def bench_bundle(bundle: Bundle, config: BenchConfig | None = None, data: str | Path | None = None,
                 output: str | Path | None = None) -> dict[str, Any]:
    """Measure the bundle's model as ``edgetl bench`` would; write report.json to ``output`` when given.

    Without ``data`` the latency batches are synthetic images (a CNN's latency does not depend on the
    pixels) and accuracy is not measured. Peak memory is measured only when ``config.memory``.
    """
    from .._io import write_json
    from .._outputs import BENCH_REPORT, claim_output
    from ..bench.discover import BenchTarget
    from ..bench.harness import measure_report

    from .model import require_runtime

    require_runtime(bundle)
    config = config or BenchConfig(memory=False)
    if output is not None:  # a new file, or a bench report edgetl wrote: never a user's file
        claim_output(output, BENCH_REPORT, overwrite=True, option="-o")
    meta = bundle.meta
    images, labels, source = _images(bundle, data, max(config.batch_sizes))
    if data is None:
        config = replace(config, accuracy=False)
    model = meta["model"]
    target = BenchTarget(artifact=bundle.model_path, runtime=bundle.runtime, key=model.get("key") or model["file"],
                         options={**bundle.runner_options, **_threads(config)},
                         precision=meta.get("precision"), format=model.get("format"),
                         size_bytes=bundle.model_path.stat().st_size, deploy_runtime=meta.get("deploy_runtime"))
    report = measure_report([target], images, labels, source, config, run_dir=Path(str(bundle.source)),
                            model=meta.get("source", {}).get("model") or {}, classes=bundle.labels)
    report["bundle"] = {"path": str(bundle.source), "target": meta.get("target"), "precision": meta.get("precision"),
                        "created": meta.get("created"), "model_sha256": meta["files"][model["file"]]}
    if output is not None:
        write_json(output, report)
    return report


def _threads(config: BenchConfig) -> dict[str, Any]:
    return {"threads": config.threads} if config.threads else {}


def _images(bundle: Bundle, data: str | Path | None, n: int) -> tuple[Any, np.ndarray, str]:
    """The labelled images of ``data`` (decoded on demand, bench's way), or ``n`` synthetic ones."""
    spec = bundle.preprocess_spec()
    if data is None:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (n, spec.input_size, spec.input_size, 3), dtype=np.uint8)
        return spec.normalize(pixels), np.zeros(n, dtype=np.int64), "synthetic images (no --data)"
    from ..data import EvalImages, scan_image_folder

    scan = scan_image_folder(data)
    if scan.classes != bundle.labels:
        raise DatasetError(f"{data} has classes {scan.classes} but the bundle's model knows {bundle.labels}: give a "
                           "folder of CLASS/*.jpg with the bundle's classes")
    images = EvalImages(scan.samples, spec)
    return images, images.labels, str(data)
