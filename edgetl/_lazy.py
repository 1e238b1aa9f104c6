"""The one way edgetl imports an optional or heavy library: :func:`lazy_import`.

A library that is missing, broken or older than edgetl needs becomes a one-line
:class:`~edgetl.errors.MissingBackendError` carrying the pip command that fixes it, raised when the
library is first used rather than when edgetl is imported.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from .errors import MissingBackendError


def load_attr(dotted: str) -> Any:
    """``package.module:attribute`` imported on demand (the entries of edgetl's tables)."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def lazy_import(module: str, *, extra: str | None = None, package: str | None = None, purpose: str = "",
                min_version: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingBackendError` with the install hint.

    ``package`` is the pip distribution (default: the top-level module name), ``extra`` the edgetl
    extra that installs it (None: ``pip install PACKAGE``), ``purpose`` what it is needed for.
    With ``min_version``, an installed but older library is an error naming both versions.
    """
    root = module.partition(".")[0]
    package = package or root
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or root).partition(".")[0] == root:
            raise MissingBackendError(package, extra, purpose, required=min_version) from exc
        # installed, but its own import fails (a missing shared library or dependency)
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MissingBackendError(package, extra, purpose, detail=detail[:160]) from exc
    if min_version:
        found = installed_version(package, mod)
        if found is not None and version_tuple(found) < version_tuple(min_version):
            raise MissingBackendError(package, extra, purpose, found=found, required=min_version)
    return mod


def installed_version(package: str, module: ModuleType | None = None) -> str | None:
    """The installed version of distribution ``package`` (else ``module.__version__``; None when unknown).

    Libraries installed outside pip (TensorRT from JetPack's apt packages) have no distribution
    metadata, hence the fallback to the module's own ``__version__``.
    """
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None)
        return str(version) if version else None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2024.4.1-16579-abc"`` -> ``(2024, 4, 1)``: the numeric release, for comparisons."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("vV"))
    numbers = tuple(int(part) for part in match.group(0).split(".")) if match else (0,)
    return numbers + (0,) * max(0, 4 - len(numbers))  # 2.14 == 2.14.0
