"""What fine-tuning runs of one search can share: the dataset scan and a frozen backbone's features.

A study's trials read the same folder and often start from the same pretrained backbone. ``SharedCache``
keeps the scanned splits in memory (one process) and the backbone's features of an image list on disk
(``FOLDER/features-KEY.pt``), so every trial, worker process and resumed study after the first skips that
forward pass. The key is a digest of what the features depend on: the backbone's weights (every tensor
outside the new head, so the model, its weights file, a random init's seed and the image size all count),
the eval preprocessing, and each image's path, label, size and modification time. An entry is written
atomically with its sha256 beside it and checked before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import atomic_path, sha256, write_json

log = logging.getLogger(__name__)

Features = tuple[Any, Any]
"""(features, labels) tensors."""


class SharedCache:
    """Dataset splits (in memory) and backbone features (in memory and in ``folder``, if given)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._splits: dict[tuple, Any] = {}
        self._features: dict[str, Features] = {}
        self.hits = {"splits": 0, "features": 0}
        self.misses = {"splits": 0, "features": 0}

    def splits(self, key: tuple, load: Callable[[], Any]) -> Any:
        """The splits ``load()`` returns for ``key`` (dataset options), scanned once per process."""
        if key in self._splits:
            self.hits["splits"] += 1
            return self._splits[key]
        self.misses["splits"] += 1
        self._splits[key] = value = load()
        return value

    def features(self, backbone: str, preprocess: dict[str, Any], samples: list[tuple[Path, int]],
                 compute: Callable[[], Features]) -> Features:
        """``compute()``'s features of ``samples`` under the backbone whose :func:`backbone_digest` is
        ``backbone``, from the cache when they are there."""
        key = feature_key(backbone, preprocess, samples)
        found = self._features.get(key) or self._load(key, len(samples))
        if found is not None:
            self.hits["features"] += 1
            self._features[key] = found
            log.info("features of %d images from the shared cache", len(samples))
            return found
        self.misses["features"] += 1
        self._features[key] = value = compute()
        self._save(key, value)
        return value

    def counts(self) -> dict[str, int]:
        """Hits and misses so far, as ``{"features_hits": .., "features_misses": .., ...}``."""
        return {f"{k}_{kind}": v for kind, table in (("hits", self.hits), ("misses", self.misses))
                for k, v in table.items()}

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"features-{key}.pt", self.folder / f"features-{key}.json"

    def _load(self, key: str, count: int) -> Features | None:
        if self.folder is None:
            return None
        path, meta_path = self._paths(key)
        if not (path.is_file() and meta_path.is_file()):
            return None
        from ..errors import EdgetlError
        from ..models import load_torch_file

        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("sha256") != sha256(path) or meta.get("images") != count:
                log.warning("shared feature cache %s does not match its checksum: computing again", path.name)
                return None
            data = load_torch_file(path, what="a feature cache", hint="computing the features again")
            if not isinstance(data, dict) or not all(hasattr(data.get(k), "shape") for k in ("features", "labels")):
                raise ValueError("not a features file")
        except EdgetlError as exc:
            log.warning("shared %s", exc)
            return None
        except (OSError, ValueError) as exc:
            log.warning("shared feature cache %s unreadable (%s): computing again", path.name, exc)
            return None
        return data["features"], data["labels"]

    def _save(self, key: str, value: Features) -> None:
        if self.folder is None:
            return
        import torch

        path, meta_path = self._paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"features": value[0], "labels": value[1]}, tmp)
        write_json(meta_path, {"sha256": sha256(path), "images": int(len(value[1])),
                               "shape": list(value[0].shape)})


def backbone_digest(model: Any, heads: list[str]) -> str:
    """Digest of the model's tensors outside ``heads`` (hash it once: it reads every weight)."""
    import torch

    digest = hashlib.sha256()
    prefixes = tuple(f"{h}." for h in heads)
    for name, tensor in model.state_dict().items():
        if name.startswith(prefixes):
            continue
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_key(backbone: str, preprocess: dict[str, Any], samples: list[tuple[Path, int]]) -> str:
    """Digest of the backbone's digest, the preprocessing and the image list."""
    digest = hashlib.sha256(backbone.encode())
    digest.update(json.dumps(preprocess, sort_keys=True, default=str).encode())
    for path, label in samples:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]
