"""Reading a bundle: bundle.json checked (present, well-formed, a schema this runtime knows, every field
the runtime reads; see :mod:`.schema`), every file checked against its sha256 and labels.txt against
``labels``. An archive is checked before anything is unpacked: its bundle.json is read first, then every
member must be a regular file bundle.json lists (with its recorded size) or a folder, relative, without
``..``, all together under :data:`MAX_UNPACKED_BYTES`.

Standard library only (plus :mod:`edgetl.errors`, :mod:`edgetl._io`, :mod:`.schema`): an app imports this
without torch.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import sha256
from ..errors import BundleError
from .schema import BUNDLE_FILE, LABELS_FILE, REMAKE, check_labels_file, check_meta  # noqa: F401 (edgetl.package)

try:
    from lzma import LZMAError as _LZMA_ERROR
except ImportError:  # Python built without lzma: tarfile cannot open .tar.xz either
    _LZMA_ERROR = zlib.error

SCHEMA_VERSION = 1
"""bundle.json schema this runtime writes and reads (a bundle with a higher one is refused)."""
REQUIRED_KEYS = ("schema", "task", "runtime", "model", "input", "preprocessing", "labels", "files")
"""Keys a bundle.json must have for the runtime to use it."""
MAX_UNPACKED_BYTES = 4 * 2**30
"""Default cap on the bytes an archive may unpack to (all its files together); ``open_bundle(max_bytes=)``."""
MAX_MEMBERS = 10_000
"""Most archive members (files and folders) accepted: a bundle has a few dozen."""
MAX_META_BYTES = 16 * 2**20
"""Largest bundle.json read."""


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


def open_bundle(path: str | Path, *, verify: bool = True, max_bytes: int | None = None) -> Bundle:
    """A bundle folder or ``.tar.gz``: bundle.json read and checked, then (``verify``) every file's sha256,
    then labels.txt against ``labels``. An archive is checked member by member before it is unpacked, its
    files together at most ``max_bytes`` [default: :data:`MAX_UNPACKED_BYTES`]."""
    source = Path(path)
    tmp = None
    if source.is_file():
        tmp = tempfile.TemporaryDirectory(prefix="edgetl-bundle-")
        try:
            root = bundle_root(safe_extract(source, Path(tmp.name), max_bytes=max_bytes), source)
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
        check_labels_file(root, meta, source)
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
    raise _no_meta(source)


def _no_meta(source: Path) -> BundleError:
    return BundleError(f"{source} has no {BUNDLE_FILE}: not an edgetl bundle (make one with `edgetl package RUN "
                       "--target TARGET`)")


def read_meta(root: Path, source: Path) -> dict[str, Any]:
    """bundle.json of the folder ``root``, checked by :func:`parse_meta`."""
    path = root / BUNDLE_FILE
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise BundleError(f"{BUNDLE_FILE} of {source} is over {MAX_META_BYTES >> 20} MiB: not one edgetl "
                              f"wrote; {REMAKE}")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {BUNDLE_FILE} of {source} ({str(exc).splitlines()[0][:160]}): "
                          f"{REMAKE}") from None
    return parse_meta(data, source)


def parse_meta(data: bytes, source: Path) -> dict[str, Any]:
    """bundle.json checked: valid JSON, an object with the required keys, a schema this runtime reads, and
    every field the runtime reads (:func:`.schema.check_meta`)."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
    for rel in meta["files"]:
        check_member_name(rel, source)
    check_meta(meta, source)
    return meta


def verify_files(root: Path, meta: dict[str, Any], source: Path) -> None:
    """Every file in ``meta["files"]`` is inside the bundle and has its recorded size (where bundle.json
    has sizes) and sha256, else BundleError."""
    base = root.resolve()
    sizes = meta.get("sizes") or {}
    for rel, digest in meta["files"].items():
        path = (root / check_member_name(rel, source)).resolve()
        if not path.is_relative_to(base):
            raise BundleError(f"{source}: {rel} points outside the bundle: refusing to load it")
        if not path.is_file():
            raise BundleError(f"{source}: {rel} is missing (bundle.json lists it): the bundle is incomplete")
        wrong = ("size" if rel in sizes and path.stat().st_size != sizes[rel]
                 else "sha256" if sha256(path) != digest else None)
        if wrong:
            raise BundleError(f"{source}: {rel} does not match its {wrong} in bundle.json (changed or damaged "
                              "since it was packaged): refusing to load it; re-create the bundle with `edgetl package`")


def check_member_name(name: str, source: Path) -> str:
    """``name`` when it is a relative path with no ``..``; else BundleError naming it."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{source} holds an empty or non-text path {name!r}: refusing to unpack it")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{source} holds an absolute path {name!r}: refusing to unpack it")
    if ".." in pure.parts:
        raise BundleError(f"{source} holds a path leaving the bundle {name!r}: refusing to unpack it")
    return name


def safe_extract(archive: Path, dest: Path, *, max_bytes: int | None = None) -> Path:
    """Unpack ``archive`` into ``dest`` once :func:`check_archive` has passed every member; then with
    tarfile's ``data`` filter. Nothing is written before every member has been checked."""
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.ReadError:
        raise BundleError(f"{archive} is not a readable bundle archive (not a .tar.gz, .tar.bz2 or .tar.xz file): "
                          "give the .tar.gz written by `edgetl package` or its folder") from None
    except OSError as exc:
        raise BundleError(f"cannot read {archive} ({_first_line(exc)}): give the .tar.gz written by `edgetl "
                          "package` or its folder") from None
    with tar:
        try:
            members = check_archive(tar, archive, max_bytes)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the members were checked above
                tar.extractall(dest, members=members)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, _LZMA_ERROR) as exc:
            raise BundleError(f"{archive} is not a readable bundle archive ({_first_line(exc)}): give the .tar.gz "
                              "written by `edgetl package` or its folder") from None
        except OSError as exc:
            raise BundleError(f"cannot unpack {archive} into {dest} ({_first_line(exc)}): free space in the "
                              "temporary folder (TMPDIR), or unpack it yourself and give the folder") from None
    return dest


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n} bytes"


def check_archive(tar: tarfile.TarFile, archive: Path, max_bytes: int | None = None) -> list[tarfile.TarInfo]:
    """The members of ``tar``, read header by header and checked before anything is extracted: safe names,
    regular files and folders only, no name twice, at most :data:`MAX_MEMBERS`, files adding up to at most
    ``max_bytes`` [default: :data:`MAX_UNPACKED_BYTES`]; bundle.json (at the top or in the one top folder) read
    from the archive and checked, and every file a member bundle.json lists, with its recorded size where
    bundle.json has sizes."""
    max_bytes = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    listing: _Listing | None = None
    while (member := tar.next()) is not None:
        if len(members) >= MAX_MEMBERS:
            raise BundleError(f"{archive} holds more than {MAX_MEMBERS} members: not an edgetl bundle; refusing to "
                              "unpack it")
        key = _member_key(member, archive)
        if key in seen:
            raise BundleError(f"{archive} holds {member.name!r} twice: refusing to unpack it")
        seen.add(key)
        total += member.size if member.isfile() else 0
        if total > max_bytes:
            raise BundleError(f"{archive} would unpack to more than {_size(max_bytes)} (at "
                              f"{member.name!r}): refusing to unpack it; if it is a genuine bundle, unpack it yourself "
                              "and give the folder")
        members.append(member)
        if listing is None and (prefix := _meta_prefix(key)) is not None and member.isfile():
            listing = _Listing(prefix, _archive_meta(tar, member, archive), archive)
            for earlier in members:
                listing.check(earlier)
        elif listing is not None:
            listing.check(member)
    if listing is None:
        raise _no_meta(archive)
    return members


def _member_key(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's normalised name (``./a//b/`` -> ``a/b``) once its name and kind are safe."""
    check_member_name(member.name, archive)
    if not (member.isfile() or member.isdir()) or member.issparse():
        kind = ("a symlink" if member.issym() else "a hard link" if member.islnk()
                else "a sparse file" if member.issparse() else "not a regular file")
        raise BundleError(f"{archive} member {member.name!r} is {kind}: bundles hold only regular files "
                          "and folders; refusing to unpack it")
    return PurePosixPath(member.name).as_posix()


def _meta_prefix(key: str) -> str | None:
    """``""`` for a top-level bundle.json, ``"TOP/"`` for one in a top folder, else None."""
    parts = key.split("/")
    if parts[-1] != BUNDLE_FILE or len(parts) > 2:
        return None
    return "" if len(parts) == 1 else parts[0] + "/"


def _archive_meta(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> dict[str, Any]:
    """bundle.json read from the archive (nothing written) and checked."""
    if member.size > MAX_META_BYTES:
        raise BundleError(f"{BUNDLE_FILE} of {archive} is over {MAX_META_BYTES >> 20} MiB: not one edgetl wrote; "
                          "refusing to unpack it")
    handle = tar.extractfile(member)
    return parse_meta(handle.read() if handle else b"", archive)


@dataclass
class _Listing:
    """What an archive may hold, from its bundle.json: folders, bundle.json, and the files it lists."""

    prefix: str
    meta: dict[str, Any]
    archive: Path

    def check(self, member: tarfile.TarInfo) -> None:
        key = PurePosixPath(member.name).as_posix()
        top = self.prefix.rstrip("/")
        if member.isdir() and key == ".":
            return
        if self.prefix and key != top and not key.startswith(self.prefix):
            raise BundleError(f"{self.archive} holds {member.name!r} outside its bundle folder {top}/: refusing to "
                              "unpack it")
        if member.isdir():
            return
        rel = key[len(self.prefix):]
        if rel == BUNDLE_FILE:
            return
        if rel not in self.meta["files"]:
            raise BundleError(f"{self.archive} holds {member.name!r}, which its {BUNDLE_FILE} does not list: "
                              f"refusing to unpack it; {REMAKE}")
        size = (self.meta.get("sizes") or {}).get(rel)
        if size is not None and member.size != size:
            raise BundleError(f"{self.archive} member {member.name!r} is {member.size} bytes but {BUNDLE_FILE} "
                              f"records {size}: refusing to unpack it; {REMAKE}")
