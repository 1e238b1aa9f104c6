"""Structured pruning (Torch-Pruning), the architecture record that lets a pruned checkpoint load with
``weights_only=True``, MAC counting, and 2:4 semi-structured sparsity for TensorRT's sparse kernels."""

from __future__ import annotations

from .architecture import apply_architecture, architecture_record
from .counting import count_macs
from .reconstruct import reconstruct_layers, reconstructable_layers
from .sparsity import MaskKeeper, apply_semi_structured_2_4, keep_masks, sparsity_2_4_fraction
from ._tp import import_torch_pruning
from .structured import PruneSettings, StructuredPruner, prune_model

__all__ = ["MaskKeeper", "PruneSettings", "StructuredPruner", "apply_architecture", "apply_semi_structured_2_4",
           "architecture_record", "count_macs", "import_torch_pruning", "keep_masks", "prune_model",
           "reconstruct_layers", "reconstructable_layers", "sparsity_2_4_fraction"]
