"""Reading a bundle: bundle.json checked (present, well-formed, a schema this runtime knows), every file
checked against its sha256, archives unpacked safely (regular files and folders only, nothing outside).

Standard library only (plus :mod:`edgetl.errors`, :mod:`edgetl._io`): an app imports this without torch.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import sha256
from ..errors import BundleError
from . import SCHEMA_VERSION

BUNDLE_FILE = "bundle.json"
LABELS_FILE = "labels.txt"
REQUIRED_KEYS = ("schema", "task", "runtime", "model", "input", "preprocessing", "labels", "files")
"""Keys a bundle.json must have for the runtime to use it."""


@dataclass
class Bundle:
    """An opened bundle: its folder (an archive is unpacked into a temporary one) and bundle.json."""

    root: Path
    meta: dict[str, Any]
    source: Path
    """What was opened: the archive or the folder."""
    _tmp: Any = field(default=None, repr=False)
    """The temporary folder an archive was unpacked into (removed with :meth:`close`)."""

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def runtime(self) -> str:
        return self.meta["runtime"]

    @property
    def model_path(self) -> Path:
        return self.root / self.meta["model"]["file"]

    @property
    def runner_options(self) -> dict[str, Any]:
        return dict(self.meta["model"].get("runner_options") or {})

    def preprocess_spec(self):
        """The :class:`~edgetl.preprocessing.PreprocessSpec` the model was trained and benchmarked with."""
        from ..preprocessing import PreprocessSpec

        return PreprocessSpec.from_dict(self.meta["preprocessing"])

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def open_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """A bundle folder or ``.tar.gz``: bundle.json read and checked, then (``verify``) every file's sha256."""
    source = Path(path)
    tmp = None
    if source.is_file():
        tmp = tempfile.TemporaryDirectory(prefix="edgetl-bundle-")
        try:
            root = bundle_root(safe_extract(source, Path(tmp.name)), source)
        except BaseException:
            tmp.cleanup()
            raise
    elif source.is_dir():
        root = bundle_root(source, source)
    else:
        raise BundleError(f"bundle not found: {source} (give a bundle-TARGET-PRECISION.tar.gz or its folder)")
    try:
        meta = read_meta(root, source)
        if verify:
            verify_files(root, meta, source)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root, meta, source, tmp)


def bundle_root(folder: Path, source: Path) -> Path:
    """The folder holding bundle.json: ``folder`` itself or its single subfolder (archives hold one)."""
    if (folder / BUNDLE_FILE).exists():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and (subs[0] / BUNDLE_FILE).exists():
        return subs[0]
    raise BundleError(f"{source} has no {BUNDLE_FILE}: not an edgetl bundle (make one with `edgetl package RUN "
                      "--target TARGET`)")


def read_meta(root: Path, source: Path) -> dict[str, Any]:
    """bundle.json, checked: valid JSON, an object with the required keys, a schema this runtime reads."""
    try:
        meta = json.loads((root / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{BUNDLE_FILE} of {source} is malformed ({str(exc).splitlines()[0][:160]}): "
                          "re-create the bundle with `edgetl package`") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{BUNDLE_FILE} of {source} is malformed: its top level is not a JSON object")
    schema = meta.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise BundleError(f"{BUNDLE_FILE} of {source} is malformed: no integer \"schema\"")
    if schema > SCHEMA_VERSION:
        raise BundleError(f"{source} was made by a newer edgetl (bundle schema {schema}; this runtime reads up to "
                          f"{SCHEMA_VERSION}): upgrade it with `pip install -U --no-deps edgetl`")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise BundleError(f"{BUNDLE_FILE} of {source} is malformed: missing {', '.join(missing)}")
    if not isinstance(meta["files"], dict) or not isinstance(meta["model"], dict) or "file" not in meta["model"]:
        raise BundleError(f"{BUNDLE_FILE} of {source} is malformed: \"files\" must map paths to sha256 and "
                          "\"model\" must name its \"file\"")
    if meta["model"]["file"] not in meta["files"]:
        raise BundleError(f"{BUNDLE_FILE} of {source} does not list the sha256 of its model "
                          f"{meta['model']['file']}, so the model cannot be trusted")
    return meta


def verify_files(root: Path, meta: dict[str, Any], source: Path) -> None:
    """Every file in ``meta["files"]`` is inside the bundle and has its recorded sha256, else BundleError."""
    base = root.resolve()
    for rel, digest in meta["files"].items():
        path = (root / check_member_name(rel, source)).resolve()
        if not path.is_relative_to(base):
            raise BundleError(f"{source}: {rel} points outside the bundle: refusing to load it")
        if not path.is_file():
            raise BundleError(f"{source}: {rel} is missing (bundle.json lists it): the bundle is incomplete")
        if sha256(path) != digest:
            raise BundleError(f"{source}: {rel} does not match its sha256 in bundle.json (changed or damaged "
                              "since it was packaged): refusing to load it; re-create the bundle with `edgetl package`")


def check_member_name(name: str, source: Path) -> str:
    """``name`` when it is a relative path with no ``..``; else BundleError naming it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{source} holds an absolute path {name!r}: refusing to unpack it")
    if ".." in pure.parts:
        raise BundleError(f"{source} holds a path leaving the bundle {name!r}: refusing to unpack it")
    return name


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member: relative names without ``..``,
    regular files and folders only (no symlinks, hard links, devices); then tarfile's ``data`` filter."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "not a regular file"
                    raise BundleError(f"{archive} member {member.name!r} is {kind}: bundles hold only regular files "
                                      "and folders; refusing to unpack it")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive} is not a readable bundle archive ({str(exc)[:160]}): give the "
                          ".tar.gz written by `edgetl package` or its folder") from None
    return dest
