"""PyTorch eager runner: the float reference every other format is compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Runner, RunnerInfo


class TorchRunner(Runner):
    """Runs a run folder's ``checkpoint.pt`` (or an in-memory module via :meth:`from_module`)."""

    runtime = "torch"
    option_names = ("threads",)

    def __init__(self, artifact: str | Path, *, threads: int | None = None, **options: Any) -> None:
        super().__init__(artifact, threads=threads, **options)
        self.model = None

    @classmethod
    def from_module(cls, model: Any, threads: int | None = None) -> TorchRunner:
        runner = cls("<in-memory>", threads=threads)
        runner.model = model.eval()
        runner.loaded = True
        return runner

    def _load_impl(self) -> None:
        from ..models import load_checkpoint, load_run_model

        self.model, _ = load_checkpoint(self.artifact) if self.artifact.is_file() else load_run_model(self.artifact)

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).float().numpy()

    def _describe_impl(self) -> RunnerInfo:
        import torch

        return RunnerInfo(runtime="torch", version=torch.__version__, device="cpu", precision="fp32",
                          threads=torch.get_num_threads())
