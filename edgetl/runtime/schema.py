"""bundle.json's schema: every field the runtime reads, checked for type and range before any use.

:func:`check_meta` checks bundle.json on its own (an archive's before anything is unpacked),
:func:`check_labels_file` compares ``labels`` with labels.txt, :func:`check_model_shapes` compares the
recorded input and label count with the loaded model's own. Each failure is one :class:`BundleError`
naming the field. Standard library only: an app imports this without torch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..preprocessing import INTERPOLATIONS

BUNDLE_FILE = "bundle.json"
LABELS_FILE = "labels.txt"
TASK = "image-classification"
BUNDLE_RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
"""Runtimes a bundle's model runs on."""
MAX_INPUT_SIZE = 4096
MAX_RESIZE_SIZE = 8192
"""Largest ``input_size`` / ``resize_size`` accepted (pixels per side): more is a damaged bundle.json."""
SHA256 = re.compile(r"[0-9a-f]{64}")
REMAKE = "re-create the bundle with `edgetl package RUN --target TARGET`"


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(n: int) -> str:
    return f"{n} name" if n == 1 else f"{n} names"


def field_error(source: Any, name: str, problem: str) -> BundleError:
    """``bundle.json of SOURCE: "NAME" PROBLEM: re-create the bundle ...``, one line."""
    return BundleError(f"{BUNDLE_FILE} of {source}: \"{name}\" {problem}: {REMAKE}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any, source: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise field_error(source, name, f"must be an object, not {_show(value)}")
    return value


def _text(obj: dict[str, Any], key: str, source: Any, where: str, *, required: bool = False,
          allowed: tuple[str, ...] = ()) -> None:
    """``obj[key]`` is a string (one of ``allowed`` when given); absent or null only when not ``required``."""
    value = obj.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or not value or (allowed and value not in allowed):
        expected = ("a non-empty string" if not allowed else allowed[0] if len(allowed) == 1
                    else f"one of {', '.join(allowed)}")
        raise field_error(source, f"{where}{key}", f"must be {expected}, not {_show(value)}")


def check_meta(meta: dict[str, Any], source: Any) -> None:
    """Every field of bundle.json the runtime reads: types, ranges and agreement between fields."""
    _check_files(meta, source)
    _text(meta, "task", source, "", required=True, allowed=(TASK,))
    _text(meta, "runtime", source, "", required=True, allowed=BUNDLE_RUNTIMES)
    for key in ("target", "precision", "created", "deploy_runtime", "edgetl_version"):
        _text(meta, key, source, "")
    _check_model(_mapping(meta["model"], source, "model"), meta["files"], source)
    size = _check_preprocessing(_mapping(meta["preprocessing"], source, "preprocessing"), source)
    _check_input(_mapping(meta["input"], source, "input"), size, source)
    labels = _check_labels(meta["labels"], source)
    if meta.get("output") is not None:
        shape = _mapping(meta["output"], source, "output").get("shape")
        if shape is not None and (not isinstance(shape, list) or not shape or not all(map(_is_int, shape))):
            raise field_error(source, "output.shape", f"must be a list of integers, not {_show(shape)}")
        if shape and shape[-1] != len(labels):
            raise field_error(source, "labels", f"has {_names(len(labels))} but \"output.shape\" {_show(shape)} "
                              f"has {shape[-1]} classes")
    if meta.get("source") is not None:
        record = _mapping(meta["source"], source, "source")
        if record.get("model") is not None:
            _mapping(record["model"], source, "source.model")


def _check_files(meta: dict[str, Any], source: Any) -> None:
    """``files`` maps relative paths to sha256 hex digests and lists labels.txt; ``sizes`` (optional,
    written since file sizes were recorded) maps listed paths to byte counts."""
    files = meta["files"]
    if not isinstance(files, dict) or not files:
        raise field_error(source, "files", "must map every bundled file to its sha256")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise field_error(source, f"files.{rel}", f"must be a sha256 (64 hex digits), not {_show(digest)}")
    if LABELS_FILE not in files:
        raise field_error(source, "files", f"does not list {LABELS_FILE}, so the labels cannot be trusted")
    sizes = meta.get("sizes")
    if sizes is None:
        return
    if not isinstance(sizes, dict):
        raise field_error(source, "sizes", f"must map bundled files to their sizes in bytes, not {_show(sizes)}")
    for rel, size in sizes.items():
        if rel not in files:
            raise field_error(source, f"sizes.{rel}", "names a file that \"files\" does not list")
        if not _is_int(size) or size < 0:
            raise field_error(source, f"sizes.{rel}", f"must be a size in bytes, not {_show(size)}")


def _check_model(model: dict[str, Any], files: dict[str, Any], source: Any) -> None:
    _text(model, "file", source, "model.", required=True)
    if model["file"] not in files:
        raise BundleError(f"{BUNDLE_FILE} of {source} does not list the sha256 of its model "
                          f"{model['file']}, so the model cannot be trusted")
    for key in ("key", "format", "precision_ran"):
        _text(model, key, source, "model.")
    options = model.get("runner_options")
    if options is not None and not isinstance(options, dict):
        raise field_error(source, "model.runner_options", f"must be an object, not {_show(options)}")


def _check_preprocessing(pre: dict[str, Any], source: Any) -> int:
    """The preprocessing fields :class:`~edgetl.preprocessing.PreprocessSpec` takes, all present and sane;
    returns ``input_size``."""
    size, resize = pre.get("input_size"), pre.get("resize_size")
    if not _is_int(size) or not 8 <= size <= MAX_INPUT_SIZE:
        raise field_error(source, "preprocessing.input_size",
                          f"must be an integer from 8 to {MAX_INPUT_SIZE}, not {_show(size)}")
    if not _is_int(resize) or not size <= resize <= MAX_RESIZE_SIZE:
        raise field_error(source, "preprocessing.resize_size",
                          f"must be an integer from input_size ({size}) to {MAX_RESIZE_SIZE}, not {_show(resize)}")
    for key, bounds, sane in (("mean", "[0, 1]", lambda v: 0 <= v <= 1), ("std", "(0, 1]", lambda v: 0 < v <= 1)):
        values = pre.get(key)
        if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) and sane(v) for v in values):
            raise field_error(source, f"preprocessing.{key}", f"must be three numbers in {bounds} (pixels scaled to "
                              f"[0, 1]), not {_show(values)}")
    _text(pre, "interpolation", source, "preprocessing.", required=True, allowed=INTERPOLATIONS)
    _text(pre, "channel_order", source, "preprocessing.", allowed=("RGB",))
    _text(pre, "layout", source, "preprocessing.", allowed=("NCHW",))
    return size


def _check_input(inp: dict[str, Any], size: int, source: Any) -> None:
    """``input.shape`` is [N, 3, S, S] with S the preprocessing's ``input_size``."""
    shape = inp.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(_is_int(d) and d > 0 for d in shape) \
            or shape[1] != 3:
        raise field_error(source, "input.shape", f"must be [N, 3, H, W] with positive integers, not {_show(shape)}")
    if shape[2:] != [size, size]:
        raise field_error(source, "preprocessing.input_size", f"is {size} but \"input.shape\" is {_show(shape)} "
                          f"(the model takes {shape[2]}x{shape[3]} images)")
    _text(inp, "name", source, "input.")
    _text(inp, "layout", source, "input.", allowed=("NCHW",))
    _text(inp, "dtype", source, "input.", allowed=("float32",))
    _text(inp, "channel_order", source, "input.", allowed=("RGB",))
    if "dynamic_batch" in inp and not isinstance(inp["dynamic_batch"], bool):
        raise field_error(source, "input.dynamic_batch", f"must be true or false, not {_show(inp['dynamic_batch'])}")


def _check_labels(labels: Any, source: Any) -> list[str]:
    if not isinstance(labels, list) or not labels:
        raise field_error(source, "labels", f"must be a list of class names, not {_show(labels)}")
    for label in labels:
        if not isinstance(label, str) or not label or "\n" in label or "\r" in label:
            raise field_error(source, "labels", f"must hold one-line class names, not {_show(label)}")
    if len(set(labels)) != len(labels):
        raise field_error(source, "labels", f"names a class twice ({_show(labels)})")
    return labels


def check_labels_file(root: Path, meta: dict[str, Any], source: Any) -> None:
    """``labels`` equals labels.txt (one name a line, the file sha256-checked when the bundle is verified)."""
    path = root / LABELS_FILE
    if not path.resolve().is_relative_to(root.resolve()) or not path.is_file():
        raise BundleError(f"{source}: {LABELS_FILE} is missing or not a regular file (bundle.json lists it): "
                          f"the bundle is incomplete; {REMAKE}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{source}: cannot read {LABELS_FILE} ({str(exc).splitlines()[0][:120]}); "
                          f"{REMAKE}") from None
    names = text.split("\n")
    if names and names[-1] == "":
        names.pop()
    if names != meta["labels"]:
        raise field_error(source, "labels", f"{_show(meta['labels'])} differ from {LABELS_FILE} {_show(names)}")


def check_model_shapes(meta: dict[str, Any], source: Any, input_dims: list[int | None] | None,
                       output_dims: list[int | None] | None) -> None:
    """The model's own input [N, 3, S, S] and output [N, classes] (None: a dynamic or unknown dim) against
    bundle.json's ``input.shape`` and ``labels``."""
    expected = meta["input"]["shape"]
    if input_dims is not None:
        if len(input_dims) != 4 or any(d is not None and d != e for d, e in zip(input_dims[1:], expected[1:])):
            shown = [d if d is not None else "?" for d in input_dims]
            raise field_error(source, "input.shape", f"is {_show(expected)} but the model {meta['model']['file']} "
                              f"takes {_show(shown)}")
    if output_dims:
        width = output_dims[-1]
        if width is not None and width != len(meta["labels"]):
            raise field_error(source, "labels", f"has {_names(len(meta['labels']))} but the model "
                              f"{meta['model']['file']} outputs {width} classes")
