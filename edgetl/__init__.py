"""edgetl: image-classification dataset -> fine-tuned, compressed, benchmarked edge model.

The public API is imported lazily so ``import edgetl`` and ``edgetl --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "finetune": "edgetl.finetune:finetune",
    "resume": "edgetl.stages:resume",
    "FinetuneConfig": "edgetl.finetune:FinetuneConfig",
    "export_onnx": "edgetl.export:export_onnx",
    "ExportConfig": "edgetl.export:ExportConfig",
    "build_model": "edgetl.models:build_model",
    "build_target": "edgetl.build:build_target",
    "TargetBuildConfig": "edgetl.build:TargetBuildConfig",
    "qat_target": "edgetl.qat:qat_target",
    "benchmark": "edgetl.bench:benchmark",
    "BenchConfig": "edgetl.bench:BenchConfig",
    "Manifest": "edgetl.run:Manifest",
    "run_status": "edgetl.run:run_status",
    "PreprocessSpec": "edgetl.preprocessing:PreprocessSpec",
    "run_demo": "edgetl.demo:run_demo",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgetl' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
