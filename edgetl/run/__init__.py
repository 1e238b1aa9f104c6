"""The run folder: the only thing that flows between stages.

``manifest`` owns the schema of ``edgetl.json``; ``stage`` is how a stage writes into a run;
``integrity`` checks recorded sha256s and staleness; ``split`` freezes the evaluation images;
``lock`` keeps concurrent writers apart.
"""

from __future__ import annotations

from pathlib import Path

from .integrity import StageState, require_current, run_status, stale_reason, verified_file
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, is_run_folder, library_versions
from .stage import StageWriter, stage

__all__ = ["MANIFEST_NAME", "latest_run", "SCHEMA_VERSION", "Manifest", "StageState", "StageWriter", "create_child",
           "is_run_folder", "library_versions", "require_current", "run_status", "stage", "stale_reason",
           "verified_file"]


def create_child(parent_dir: str | Path, child_dir: str | Path, *, stage: str, model: dict | None = None,
                 inputs: dict[str, str] | None = None) -> Manifest:
    """A new run derived from ``parent_dir`` (a pruned model, a search trial): it names its parent and
    inherits its classes, preprocessing, dataset record and frozen evaluation split. ``inputs``: the
    parent's files it was made from (parent-relative path -> sha256), kept in the lineage so that
    ``edgetl status`` can tell when the parent has changed since."""
    from .._io import sha256
    from .split import SPLIT_NAME, copy_split

    parent = Manifest.load(parent_dir)
    child_dir = Path(child_dir)
    child_dir.mkdir(parents=True, exist_ok=True)
    lineage = {"run": str(parent.run_dir.resolve()), "stage": stage,
               "manifest_sha256": sha256(parent.path), "inputs": dict(inputs or {}), "parent": parent.parent}
    child = Manifest.create(child_dir, model=model or parent.model, classes=parent.classes,
                            preprocessing=parent.preprocessing, parent=lineage)
    dataset = dict(parent.data.get("dataset") or {})
    if (parent.run_dir / SPLIT_NAME).is_file():
        dataset["split_sha256"] = sha256(copy_split(parent.run_dir, child_dir))
    child.set("dataset", dataset)
    child.save()
    return child


def latest_run(root: str | Path = "runs") -> Path:
    """The most recently modified run folder directly under ``root`` (what a command means when RUN is left
    out); a one-line :class:`RunFolderError` when there is none."""
    from ..errors import RunFolderError

    root = Path(root)
    runs = [d for d in root.iterdir() if is_run_folder(d)] if root.is_dir() else []
    if not runs:
        where = f"./{root}" if not root.is_absolute() else str(root)
        raise RunFolderError(f"no run given and no run folder under {where}: fine-tune one first "
                             "(edgetl finetune DATA) or name the run (edgetl export RUN ...)")
    return max(runs, key=lambda d: ((d / MANIFEST_NAME).stat().st_mtime_ns, d.name))
