"""Recovery after pruning: the distillation loss from the parent model (logits, features at chosen points,
mixup), for a fresh recovery and for a resumed one (:func:`edgetl.prune.resume`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import RunFolderError


@dataclass(frozen=True)
class FeaturePoint:
    """Where feature distillation compares the student with the parent: a module's ``input`` or ``output``,
    and the parent's channels the student kept there (None: all)."""

    module: str
    side: str
    kept: list[int] | None = None

    def to_list(self) -> list[Any]:
        """As the prune report records it (``feature_points``)."""
        return [self.module, self.side, self.kept]

    @classmethod
    def from_list(cls, value: Sequence[Any]) -> FeaturePoint:
        if not isinstance(value, (list, tuple)) or len(value) != 3 or value[1] not in ("input", "output"):
            raise RunFolderError(f"a recorded feature point is [module, input|output, channels], not {value!r}")
        return cls(str(value[0]), str(value[1]), None if value[2] is None else [int(i) for i in value[2]])


def distillation(teacher: Any, student: Any, options: Any, points: Sequence[FeaturePoint],
                 label_smoothing: float = 0.0) -> Any:
    """The recovery loss of ``options`` (a :class:`~edgetl.prune.PruneConfig`: temperature, alpha,
    feature_weight, mixup) at the feature ``points``."""
    from ...train.losses import DistillationLoss

    return DistillationLoss(teacher, options.temperature, options.alpha, label_smoothing, student=student,
                            feature_weight=options.feature_weight, mixup=options.mixup,
                            feature_points=[(p.module, p.side, p.kept) for p in points])


def pruned_bundle(run_dir: Path, bundle: Any) -> None:
    """For a resumed recovery: reshape ``bundle`` (the backbone as built) to the pruned architecture that the
    run's ``checkpoint.pt`` records."""
    from . import apply_architecture
    from ...models import load_torch_file

    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise RunFolderError(f"{run_dir} has no checkpoint.pt: prune its parent again instead")
    saved = load_torch_file(checkpoint, hint="restore it, or prune its parent again (edgetl prune PARENT -o RUN "
                                             "--overwrite)")
    architecture = saved.get("architecture") if isinstance(saved, dict) else None
    if not isinstance(architecture, dict):
        raise RunFolderError(f"{checkpoint} records no pruned architecture (damaged or foreign): restore it, or "
                             "prune its parent again (edgetl prune PARENT -o RUN --overwrite)")
    apply_architecture(bundle.model, architecture)
    bundle.architecture = architecture


def parent_teacher(run_dir: Path, parent: dict[str, Any] | None) -> Any:
    """The model a pruned run distils from: its parent run's (the lineage ``parent``)."""
    from ...models import load_run_model

    parent_dir = Path((parent or {}).get("run", ""))
    if not (parent_dir / "checkpoint.pt").is_file():
        raise RunFolderError(f"the parent run {parent_dir} of {run_dir} is gone: recovery distils from it")
    return load_run_model(parent_dir)[0]
