"""Multi-process fine-tuning on PyTorch's own distributed engine (torchrun / torch.distributed.elastic).

``edgetl finetune --nproc N`` starts N workers with torch's elastic launcher (what ``torchrun --standalone``
runs); ``torchrun -m edgetl finetune ...`` on several machines starts the same workers itself. Either way a
worker sees torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``...), joins
the job's process group and trains its shard of every epoch under DistributedDataParallel. :class:`Dist` is
the handful of collectives the trainer needs; with one process every one of them is the identity.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, EdgetlError

log = logging.getLogger(__name__)
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
"""Process-group backend per training device (the trainer trains on the CPU today: gloo)."""


class WorkerFailedError(EdgetlError):
    """A worker process of a multi-process run died or raised."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def in_worker() -> bool:
    """True inside a process started by torchrun or the elastic launcher."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_WORLD_SIZE" in os.environ


def default_threads() -> int:
    """Torch threads per process: the usable cores shared by the processes of this machine."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if in_worker() else 1
    return max(1, usable_cores() // local)


def set_threads(threads: int | None) -> None:
    """Torch's threads for this process: ``threads``, or its share of this machine's cores."""
    import torch

    torch.set_num_threads(threads or default_threads())


def is_main() -> bool:
    """Whether this process is the one that reports and writes: rank 0 of a torchrun/elastic job (before or
    after it joins the process group), or a process outside any job."""
    return os.environ.get("RANK", "0") == "0"


def check_launch(nproc: int, *, sync_bn: bool = False, device: str = "cpu") -> None:
    """One-line errors, before anything is written, for a job this machine cannot run."""
    cores = usable_cores()
    if nproc > cores:
        raise ConfigError(f"--nproc {nproc} is more than the {cores} usable CPU core(s) of this machine: use "
                          f"--nproc {cores} or fewer (torchrun -m edgetl finetune spreads a job over machines)")
    if sync_bn and nproc > 1 and device == "cpu":
        raise ConfigError("--sync-bn needs GPUs (torch's SyncBatchNorm does not run on the CPU): drop --sync-bn")


@dataclass
class Dist:
    """This process's place in the job, and the collectives the trainer uses (identity for one process)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        """This rank's items: every ``world``-th one from ``rank`` (undone by :meth:`gather`)."""
        return items[self.rank::self.world] if self.active else items

    def gather(self, part):
        """The full tensor, in the original order, from each rank's :meth:`shard` of it."""
        if not self.active:
            return part
        parts = self.all_gather_object(part)
        out = part.new_empty((sum(len(p) for p in parts), *part.shape[1:]))
        for rank, piece in enumerate(parts):
            out[rank::self.world] = piece
        return out

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (train loss, correct and seen counts)."""
        if not self.active:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_module(self, module, parameters: bool = True) -> None:
        """Rank 0's parameters (and buffers: BatchNorm statistics) in ``module`` on every rank."""
        if not self.active:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in (list(module.parameters()) if parameters else []) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def wrap(self, model):
        """``model`` under DistributedDataParallel over the parameters that train now (rebuild on unfreezing)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in model.parameters()):
            return model
        return DistributedDataParallel(model)


def current() -> Dist:
    """The running job's rank and size (rank 0 of 1 outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def convert_sync_bn(model):
    import torch.nn as nn

    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[Dist]:
    """Inside a torchrun/elastic worker: join the job's process group for the duration; elsewhere a no-op."""
    import torch.distributed as dist

    if not in_worker() or dist.is_initialized():
        yield current()
        return
    dist.init_process_group(BACKENDS[device])
    if not is_main():
        logging.getLogger("edgetl").setLevel(logging.WARNING)  # rank 0 reports progress
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def launch(nproc: int, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """Run ``entrypoint(*args)`` in ``nproc`` workers on this machine (torchrun --standalone); rank 0's result.

    A worker that dies or raises stops the job: the others are terminated and a :class:`WorkerFailedError`
    names the rank and why (an :class:`EdgetlError` raised in a worker keeps its one-line message).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"edgetl-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):  # a failure is reported in one line below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _entry)(entrypoint, *args)
    except ChildFailedError as exc:
        raise WorkerFailedError(describe_failure(exc)) from None
    return results[0]


def _entry(entrypoint: Callable[..., Any], *args: Any) -> Any:
    """A worker's main: run ``entrypoint`` and leave its error for the launcher (what torch's ``@record`` does)."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    handler = get_error_handler()
    handler.initialize()
    try:
        return entrypoint(*args)
    except BaseException as exc:
        handler.record_exception(exc)
        raise


def _error_names() -> set[str]:
    """EdgetlError and every subclass of it: the errors a worker reports as one line."""
    from ..errors import EdgetlError

    names, todo = set(), [EdgetlError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def describe_failure(exc) -> str:
    """One line: the first failed rank, its exit code or signal, and its error message when it left one."""
    import signal

    # the root cause first: a killed worker, not the peers that lost it mid-collective
    rank, failure = min(exc.failures.items(), key=lambda item: (item[1].exitcode >= 0, item[0]))
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or "").strip().splitlines()[-1] if message else ""
    if message.split(": ", 1)[0] in _error_names():
        message = message.split(": ", 1)[-1]  # the one-line message the CLI prints for one process
    if failure.exitcode < 0:
        try:
            why = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            why = f"was killed by signal {-failure.exitcode}"
    else:
        why = f"exited with code {failure.exitcode}"
    if message and "Signals." not in message and "Process failed" not in message:
        why += f": {message}"
    return f"worker rank {rank} {why}"
