"""The bundle runtime: what an app uses to run an ``edgetl package`` bundle, without torch.

    from edgetl.runtime import load
    model = load("bundle-intel-cpu-int8.tar.gz")      # or the unpacked folder
    print(model.predict("bee.jpg", top_k=2))           # Prediction(label='bees', score=0.97, ...)

Its import path needs only the standard library, numpy, Pillow and the bundle's runtime (openvino,
onnxruntime or tensorrt): torch, torchvision, click, yaml, rich and onnx are never imported
(tests/runtime/test_imports.py enforces it). Every file is checked against the sha256 in bundle.json
before anything is loaded; archives are unpacked safely. Images go through the same PIL + numpy
preprocessing (:meth:`edgetl.preprocessing.PreprocessSpec.apply`) and the same runners
(:mod:`edgetl.backends`) as ``edgetl bench``, so its answers are bench's answers.

``python -m edgetl.runtime predict BUNDLE IMAGES...`` and ``python -m edgetl.runtime bench BUNDLE`` are
its command line (argparse; see ``__main__.py``). The C++ samples shipped in bundles live in ``cpp/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from .model import BundleModel

SCHEMA_VERSION = 1
"""bundle.json schema this runtime writes and reads (a bundle with a higher one is refused)."""

__all__ = ["SCHEMA_VERSION", "load"]


def load(bundle: str | Path, *, verify: bool = True, **runner_options: Any) -> BundleModel:
    """Open a bundle (``.tar.gz`` or folder), check every file's sha256 and load its model.

    ``runner_options`` go to the runtime's runner (e.g. ``threads=2``) on top of the bundle's own.
    """
    from .model import BundleModel

    return BundleModel.open(bundle, verify=verify, **runner_options).load()
