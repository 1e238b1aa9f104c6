"""Torch-Pruning helpers the pruning modules share: the lazy import, forward arguments, channel counts."""

from __future__ import annotations

from typing import Any

TORCH_PRUNING_MIN_VERSION = "1.4"


def import_torch_pruning() -> Any:
    """``torch_pruning``, or :class:`MissingBackendError` with the install hint."""
    from ..._lazy import lazy_import

    return lazy_import("torch_pruning", extra="prune", package="torch-pruning", purpose="structured pruning",
                       min_version=TORCH_PRUNING_MIN_VERSION)


def as_forward_args(example_inputs: Any) -> tuple[Any, ...]:
    """The forward arguments: a tensor becomes a 1-tuple (Torch-Pruning would otherwise first try
    ``model(*tensor)``, i.e. the unbatched first image, and retry only when that fails)."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def channels(module: Any, side: str = "out") -> int:
    """A module's output (``side="out"``) or input (``"in"``) channel count."""
    for attr in (f"{side}_channels", f"{side}_features", "num_features", "num_parameters"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return int(module.weight.shape[0 if side == "out" else 1])
