"""The bench stage: ``edgetl bench RUN`` measures every artifact of a run (latency, accuracy, memory)."""

from __future__ import annotations

from ..run.keys import StageKind
from .base import Stage


class Bench(Stage):
    kind = StageKind.BENCH
    command = "bench"
    summary = "Benchmark a run's artifacts: latency, top-1 against the float model, memory."
    config_path = "edgetl.bench.config:BenchConfig"
    entry_path = "edgetl.bench.harness:benchmark"
