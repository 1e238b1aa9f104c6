"""The bundle runtime: what an app uses to run an ``edgetl package`` bundle, without torch.

    from edgetl.runtime import load
    model = load("bundle-intel-cpu-int8.tar.gz")      # or the unpacked folder
    print(model.predict("bee.jpg", top_k=2))           # Prediction(label='bees', score=0.97, ...)

Its import path needs only the standard library, numpy, Pillow and the bundle's runtime (openvino,
onnxruntime or tensorrt): torch, torchvision, click, yaml, rich and onnx are never imported
(tests/runtime/test_imports.py enforces it). bundle.json is checked field by field (:mod:`.schema`) and
every file against its sha256 before anything is loaded; an archive's members are checked against
bundle.json's file list and sizes before it is unpacked. Images go through the same PIL + numpy
preprocessing (:meth:`edgetl.preprocessing.PreprocessSpec.apply`) and the same runners
(:mod:`edgetl.backends`) as ``edgetl bench``, so its answers are bench's answers.

``python -m edgetl.runtime predict BUNDLE IMAGES...`` and ``python -m edgetl.runtime bench BUNDLE`` are
its command line (argparse; see ``__main__.py``). The C++ samples shipped in bundles live in ``cpp/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bundle import SCHEMA_VERSION

if TYPE_CHECKING:
    from pathlib import Path

    from .model import BundleModel

__all__ = ["SCHEMA_VERSION", "load"]


def load(bundle: str | Path, *, verify: bool = True, max_bytes: int | None = None,
         **runner_options: Any) -> BundleModel:
    """Open a bundle (``.tar.gz`` or folder), check its bundle.json and every file's sha256, load its model.

    ``runner_options`` go to the runtime's runner (e.g. ``threads=2``) on top of the bundle's own;
    ``max_bytes`` caps what an archive may unpack to [default: ``bundle.MAX_UNPACKED_BYTES``, 4 GiB].
    """
    from .model import BundleModel

    return BundleModel.open(bundle, verify=verify, max_bytes=max_bytes, **runner_options).load()
