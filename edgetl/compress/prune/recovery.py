"""Recovery after pruning: the distillation loss from the parent model (logits, features at chosen points,
mixup), for a fresh recovery and for ``edgetl finetune --resume`` of a pruned run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import RunFolderError


def resume_recovery(manifest: Any, bundle: Any, config: Any) -> Any:
    """For ``edgetl finetune --resume`` of a pruned run: reshape ``bundle`` to the pruned architecture (from its
    checkpoint.pt) and return the distillation loss from the parent model."""
    from . import apply_architecture
    from ...models import load_run_model, load_torch_file

    checkpoint = manifest.run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise RunFolderError(f"{manifest.run_dir} has no checkpoint.pt: prune its parent again instead")
    saved = load_torch_file(checkpoint, hint="restore it, or prune its parent again (edgetl prune PARENT -o RUN "
                                             "--overwrite)")
    architecture = saved.get("architecture") if isinstance(saved, dict) else None
    if not isinstance(architecture, dict):
        raise RunFolderError(f"{checkpoint} records no pruned architecture (damaged or foreign): restore it, or "
                             "prune its parent again (edgetl prune PARENT -o RUN --overwrite)")
    apply_architecture(bundle.model, architecture)
    bundle.architecture = architecture
    parent = Path((manifest.parent or {}).get("run", ""))
    if not (parent / "checkpoint.pt").is_file():
        raise RunFolderError(f"the parent run {parent} of {manifest.run_dir} is gone: recovery distils from it")
    stage = manifest.stage("prune")
    teacher, _ = load_run_model(parent)
    points = (stage.get("metrics") or {}).get("feature_points") or []  # none recorded: no feature term
    return distillation(teacher, bundle.model, stage["options"], [tuple(p) for p in points], config.label_smoothing)


def distillation(teacher: Any, student: Any, options: dict[str, Any], points: list[tuple[str, str, list[int] | None]],
                 label_smoothing: float = 0.0) -> Any:
    """The recovery loss from the prune options (a resumed recovery passes its recorded ones) and the feature
    points (:meth:`_Job._feature_points`)."""
    from ...train.losses import DistillationLoss

    return DistillationLoss(teacher, options["temperature"], options["alpha"], label_smoothing, student=student,
                            feature_weight=options.get("feature_weight", 0.0), mixup=options.get("mixup", 0.0),
                            feature_points=points)
