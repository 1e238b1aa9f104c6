"""What a benchmark measures: :class:`BenchConfig` (one field per ``edgetl bench`` option) and the --batch parser."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..run.keys import BENCH

SCHEMA_VERSION = 1
"""report.json schema (docs/bench.md): changes when a field changes meaning or goes away (adding fields does not)."""
STAGE = BENCH
"""The manifest stage a benchmark records when its reports land inside the run folder."""


@dataclass
class BenchConfig:
    """How artifacts are measured. Every field maps to one ``edgetl bench`` option."""

    batch_sizes: tuple[int, ...] = (1,)
    """Batch sweep for latency and throughput (each must be <= the number of evaluation images)."""
    warmup: int = 5
    """Untimed runs before the first round, and again (at most 3) at the start of every round."""
    iterations: int = 30
    """Timed runs per artifact per batch per round (a round stops early after ``round_time_s``)."""
    rounds: int = 5
    """Interleaved rounds; the order of artifacts rotates every round."""
    round_time_s: float = 3.0
    """Time budget per artifact per batch per round; at least ``min_iterations`` runs are timed."""
    min_iterations: int = 5
    """Timed runs per round even when the time budget is spent."""
    threads: int | None = None
    """Inference threads for every runtime (None: each runtime's default)."""
    streams: int | None = None
    """OpenVINO inference streams (None: OpenVINO's default for the hint)."""
    performance_hint: str | None = None
    """OpenVINO performance hint: LATENCY or THROUGHPUT (None: OpenVINO's default)."""
    true_fp32: bool = True
    """For an OpenVINO FP32 IR, also measure with INFERENCE_PRECISION_HINT=f32 (the default may run BF16)."""
    data: str | None = None
    """Labelled folder (CLASS/*.jpg) with the run's classes (default: the run's val split)."""
    limit: int | None = None
    """Evaluate on at most this many images, class-balanced (None: all)."""
    accuracy: bool = True
    """Measure accuracy and the drop against the float reference."""
    accuracy_batch: int = 16
    """Batch size for the accuracy pass (the last batch is padded with its last image)."""
    memory: bool = True
    """Measure peak memory of each artifact in a fresh subprocess (a few seconds per artifact)."""
    runtimes: tuple[str, ...] | None = None
    """Only these runtimes (None: all the run holds)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence interval of the accuracy drop."""
    seed: int = 0
    """Seed for the bootstrap and the class-balanced ``limit`` sample."""
    verify: bool = True
    """Check every artifact against the sha256 its stage recorded before measuring it (False: measure edited
    files as they are)."""
    steady_allocator: bool = True
    """Raise glibc's mmap/trim thresholds first so large activations are not page-faulted in on every
    call (PyTorch at batch >= 8 otherwise runs ~2x slower, by an amount that depends on process history)."""
    output: str | None = None
    """Report folder (default: RUN/bench, or ./bench for loose artifacts from several runs)."""
    compare: str | None = None
    """An earlier report.json: show what got faster or slower."""
    fail_on_regression: float | None = None
    """With ``compare``: raise RegressionError when any p50 got slower by more than this many percent."""

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        for name in ("iterations", "rounds", "min_iterations", "accuracy_batch", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.round_time_s <= 0:
            raise ConfigError("warmup must be >= 0 and round_time_s > 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.performance_hint is not None:
            self.performance_hint = self.performance_hint.upper()
            if self.performance_hint not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
                raise ConfigError(f"performance_hint must be LATENCY or THROUGHPUT, not {self.performance_hint!r}")
        if self.fail_on_regression is not None and (self.compare is None or self.fail_on_regression < 0):
            raise ConfigError("fail_on_regression needs compare=OLD.json and a non-negative percentage")
        if self.runtimes is not None:
            from ..backends import RUNNERS

            self.runtimes = tuple(self.runtimes)
            unknown = [r for r in self.runtimes if r not in RUNNERS]
            if unknown:
                raise ConfigError(f"unknown runtime(s) {unknown}: choose from {', '.join(RUNNERS)}")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``, with a clear error for anything else."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--batch takes comma-separated integers such as 1,8,32, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch takes positive integers such as 1,8,32, not {text!r}")
    return tuple(dict.fromkeys(sizes))
