"""Compatibility import path: the manifest lives in :mod:`edgetl.run.manifest`."""

from .run.manifest import (MANIFEST_NAME, SCHEMA_VERSION, Manifest, is_run_folder,  # noqa: F401
                           library_versions, plain)
