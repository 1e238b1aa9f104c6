"""A loaded bundle: images in, labels and scores out, through bench's preprocessing and runners."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingBackendError
from .bundle import Bundle, open_bundle
from .schema import check_model_shapes, field_error


@dataclass
class Prediction:
    """The top-k classes of one image, best first; ``scores`` are softmax probabilities."""

    source: str
    """The image's path, or ``<image>`` / ``<array>`` for in-memory input."""
    labels: list[str]
    scores: list[float]
    indices: list[int]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, labels: Sequence[str], k: int, sources: Sequence[str]) -> list[Prediction]:
    """One :class:`Prediction` per row of ``logits`` (ties keep the lower class index first, as argmax does)."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    k = max(1, min(k, probs.shape[1]))
    out = []
    for row, source in zip(probs, sources):
        order = np.argsort(-row, kind="stable")[:k]
        out.append(Prediction(source, [labels[i] for i in order], [float(row[i]) for i in order],
                              [int(i) for i in order]))
    return out


def require_runtime(bundle: Bundle) -> None:
    """MissingBackendError saying what to pip-install when the bundle's runtime library is absent."""
    from ..backends import runtime_spec

    spec = runtime_spec(bundle.runtime)
    if importlib.util.find_spec(spec.module) is None:
        raise MissingBackendError(spec.package, None, f"this {bundle.meta.get('target') or ''} bundle ({spec.title})"
                                  .replace("this  ", "this "), required=spec.min_version)


class BundleModel:
    """A bundle's model on its runtime. ``predict`` takes a PIL image, a path, an RGB uint8 array (HWC),
    a preprocessed float32 array (CHW or NCHW), or a list of those."""

    def __init__(self, bundle: Bundle, **runner_options: Any) -> None:
        self.bundle = bundle
        self.labels = bundle.labels
        self.spec = bundle.preprocess_spec()
        self.options = {**bundle.runner_options, **runner_options}
        self.runner = None

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, max_bytes: int | None = None,
             **runner_options: Any) -> BundleModel:
        return cls(open_bundle(path, verify=verify, max_bytes=max_bytes), **runner_options)

    @property
    def runtime(self) -> str:
        return self.bundle.runtime

    def load(self) -> BundleModel:
        """Create and load the runner; a runtime that is not installed is one line saying what to install."""
        if self.runner is None:
            from ..backends import create_runner

            require_runtime(self.bundle)
            runner = create_runner(self.runtime, self.bundle.model_path, **self.options)
            runner.load()
            try:
                check_model_shapes(self.bundle.meta, self.bundle.source, *model_io_dims(runner))
            except BaseException:
                runner.close()
                raise
            self.runner = runner
        return self

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        self.bundle.close()

    def __enter__(self) -> BundleModel:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -----------------------------------------------------------------------------
    def preprocess(self, item: Any) -> tuple[np.ndarray, str]:
        """One input as a float32 CHW tensor, and its name for reports."""
        from PIL import Image

        from ..data import read_preprocessed

        if isinstance(item, (str, Path)):
            return read_preprocessed(Path(item), self.spec), str(item)  # bench's decoding, one-line errors
        if isinstance(item, Image.Image):
            return self.spec.apply(item), "<image>"
        if isinstance(item, np.ndarray):
            size = self.spec.input_size
            if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
                return self.spec.apply(Image.fromarray(item, "RGB")), "<array>"
            if item.dtype == np.float32 and item.shape == (3, size, size):
                return item, "<array>"
            raise ConfigError(f"an array input must be an RGB uint8 image (H, W, 3) or a preprocessed float32 "
                              f"tensor (3, {size}, {size}); got {item.dtype} {item.shape}")
        raise ConfigError(f"cannot predict on a {type(item).__name__}: give a path, a PIL image or a numpy array")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits of a preprocessed float32 NCHW batch."""
        self.load()
        return self.runner.infer(batch)

    def predict(self, inputs: Any, top_k: int = 5, batch_size: int = 1) -> Prediction | list[Prediction]:
        """Top-k labels and softmax scores: one :class:`Prediction` for one input, a list for a list
        (or an NCHW float32 array), run ``batch_size`` images at a time."""
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return self._predict_many(list(inputs), top_k, batch_size)
        if isinstance(inputs, (list, tuple)):
            return self._predict_many(inputs, top_k, batch_size)
        return self._predict_many([inputs], top_k, 1)[0]

    def _predict_many(self, items: Iterable[Any], k: int, batch_size: int) -> list[Prediction]:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        items = list(items)
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            tensors, names = zip(*(self.preprocess(item) for item in items[start:start + batch_size]))
            logits = self.infer(np.stack(tensors).astype(np.float32, copy=False))
            if logits.ndim != 2 or logits.shape[1] != len(self.labels):
                count = len(self.labels)
                raise field_error(self.bundle.source, "labels", f"has {count} name{'s' * (count != 1)} but the "
                                  f"model outputs logits of shape {list(logits.shape)}")
            out += top_k(logits, self.labels, k, names)
        return out


def model_io_dims(runner: Any) -> tuple[list[int | None] | None, list[int | None] | None]:
    """The loaded model's first input and output dims (None where dynamic), as far as its runner can tell:
    ONNX Runtime's session, OpenVINO's model, TensorRT's engine; (None, None) for anything else."""
    def dims(shape: Iterable[Any]) -> list[int | None]:
        return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape]

    def ov_dims(partial: Any) -> list[int | None]:
        return [d.get_length() if d.is_static else None for d in partial]

    try:
        if getattr(runner, "session", None) is not None and hasattr(runner.session, "get_inputs"):
            session = runner.session
            return dims(session.get_inputs()[0].shape), dims(session.get_outputs()[0].shape)
        if getattr(runner, "engine", None) is not None and getattr(runner, "inputs", None):
            engine = runner.engine
            return dims(engine.get_tensor_shape(runner.inputs[0])), dims(engine.get_tensor_shape(runner.outputs[0]))
        if getattr(runner, "model", None) is not None and hasattr(runner.model, "inputs"):
            model = runner.model
            return ov_dims(model.inputs[0].get_partial_shape()), ov_dims(model.outputs[0].get_partial_shape())
    except Exception:  # noqa: BLE001 - a runtime that cannot describe its model: the logits are checked instead
        return None, None
    return None, None
