"""Measuring artifacts side by side: each runner loaded (timed), then the accuracy pass, the interleaved
latency rounds (the one timing loop) and the memory probes; every artifact's numbers go into its row.

Only edgetl's own errors (:class:`~edgetl.errors.EdgetlError`) and the runtimes' errors mark an
artifact failed, and the others carry on; a bug in edgetl's code keeps its traceback
(:func:`is_edgetl_bug`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import RUNTIMES
from ..errors import DatasetError, EdgetlError, MissingBackendError
from ..run.keys import Status
from .accuracy import accuracy_pass
from .config import BenchConfig
from .discover import RUNTIME_TITLES, BenchTarget
from .memory import memory_probe

log = logging.getLogger(__name__)

# library imported before timing load(), so load_s is the model's cost, not the library's import
RUNTIME_MODULES = {name: spec.module for name, spec in RUNTIMES.items()}


def is_edgetl_bug(exc: BaseException) -> bool:
    """True when ``exc`` is a programming error in edgetl's own code, which must keep its traceback.

    That is an exception of a built-in type (``TypeError``, ``KeyError``, ``AttributeError``, ...)
    raised in a frame of the ``edgetl`` package. Not a bug: an :class:`EdgetlError`; a library's own
    exception type (ONNX Runtime's ``Fail``); anything raised inside a library's code; and
    ``RuntimeError``, ``OSError`` and ``MemoryError``, which the runtimes' C++ bindings (pybind11
    turns C++ exceptions into ``RuntimeError``) and the OS raise through the calls edgetl makes.
    """
    kind = type(exc)
    if isinstance(exc, (EdgetlError, OSError, MemoryError)) or kind is RuntimeError or kind.__module__ != "builtins":
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module == "edgetl" or module.startswith("edgetl.")


@dataclass(eq=False)
class Measured:
    """One artifact while it is measured: its target, its report row and, while it is live, its runner."""

    target: BenchTarget
    row: dict[str, Any]
    """Its ``results[]`` entry of report.json (docs/bench.md), filled in step by step."""
    runner: Any = None
    """The loaded runner; None when the artifact was skipped or failed, and once measuring is done."""
    logits: np.ndarray | None = None
    """Its logits on every evaluation image, after the accuracy pass."""

    @property
    def live(self) -> bool:
        return self.runner is not None

    def attempt(self, step: Callable[[], Any]) -> None:
        """Run one measurement step on the live runner: an edgetl or runtime error marks the artifact failed
        and leaves it out of later steps; a bug in edgetl propagates."""
        if self.runner is None:
            return
        try:
            step()
        except Exception as exc:
            if is_edgetl_bug(exc):
                raise
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        log.debug("artifact %s failed", self.target.artifact, exc_info=exc)
        self.row.update(status=str(Status.FAILED), reason=f"{type(exc).__name__}: {exc}"[:500])
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()


@dataclass
class _Steps:
    """The progress bar's one task: a status line and the steps done."""

    bar: Any
    task: Any

    def status(self, text: str) -> None:
        self.bar.update(self.task, status=text)

    def advance(self, steps: float = 1) -> None:
        self.bar.advance(self.task, steps)


def measure_artifacts(targets: Sequence[BenchTarget], images: Any, labels: np.ndarray, classes: list[str],
                      config: BenchConfig, progress: bool = True) -> list[Measured]:
    """Load every target, then (under one progress bar) the accuracy pass, the latency rounds and the
    memory probes; the runners are closed at the end and each artifact's numbers are in its ``row``."""
    head = np.ascontiguousarray(images[:max(config.batch_sizes)])  # latency batches: the only images held whole
    items = load_runners(targets, head[:1], classes)
    ok = sum(m.live for m in items)
    n_steps = (ok if config.accuracy else 0) + ok * len(config.batch_sizes) * config.rounds + (
        ok if config.memory else 0)
    with _progress(progress) as bar:
        steps = _Steps(bar, bar.add_task("bench", total=max(n_steps, 1), status=""))
        if config.accuracy:  # one streamed pass: each batch decoded once, run by every artifact
            steps.status(f"accuracy of {ok} artifact(s) on {len(images)} images")
            accuracy_pass(items, images, labels, classes, config.accuracy_batch,
                          lambda fraction: steps.advance(fraction * ok))
        measure_latency(items, head, config, steps)
        if config.memory:
            measure_memory(items, (max(config.batch_sizes), *images.shape[1:]), config, steps)
    for m in items:
        if m.live:
            m.runner.close()
            m.runner = None
    return items


class _NoBar:
    """A progress bar that shows nothing (so measuring without one needs no ``rich``: the bundle runtime)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    """rich's progress bar when ``enabled``, else :class:`_NoBar` (rich is not imported)."""
    if not enabled:
        return _NoBar()
    from .._console import progress_bar

    return progress_bar(True)


# -- loading ------------------------------------------------------------------------------------------
def load_runners(targets: Sequence[BenchTarget], probe: np.ndarray, classes: list[str]) -> list[Measured]:
    """Every target with its runner loaded; a missing runtime skips an artifact, an edgetl or runtime error
    fails it (both with the reason, and neither stops the others), a bug in edgetl propagates."""
    items = [Measured(target, _new_row(target)) for target in targets]
    for item in items:
        try:
            item.runner = _load(item.target, item.row, probe, classes)
        except MissingBackendError as exc:
            item.row.update(status="skipped", reason=str(exc))
        except Exception as exc:  # one broken artifact must not hide the others' numbers
            if is_edgetl_bug(exc):
                raise
            item.fail(exc)
    for item in items:
        if item.row["status"] != "ok":
            log.warning("%s %s: %s", item.row["status"], item.row["key"], item.row["reason"])
    _disambiguate_labels([item.row for item in items])
    return items


def _new_row(target: BenchTarget) -> dict[str, Any]:
    """A ``results[]`` entry before anything is measured."""
    title = f"{RUNTIME_TITLES.get(target.runtime, target.runtime)} {target.precision or ''}".strip()
    return {"label": f"{target.run}: {title}" if target.run else title,
            "key": target.key, "artifact": str(target.artifact), "runtime": target.runtime,
            "format": target.format, "variant": target.variant, "options": target.options,
            "precision_artifact": target.precision, "precision_executed": None, "size_bytes": target.size_bytes,
            "deploy_runtime": target.deploy_runtime,
            "status": "ok", "reason": None, "load_s": None, "load_rss_delta_mb": None, "runner": None,
            "latency": [], "memory": None, "accuracy": None, "vs_reference": None, "stale": target.stale,
            "build": target.build}


def _load(target: BenchTarget, row: dict[str, Any], probe: np.ndarray, classes: list[str]) -> Any:
    """The target's runner, loaded: load time and RSS change, what executed, and a check that it gives one
    score per class (``probe`` is one image)."""
    from ..backends import create_runner

    with contextlib.suppress(ImportError):  # the runner raises MissingBackendError with the install hint
        importlib.import_module(RUNTIME_MODULES.get(target.runtime, target.runtime))
    runner = create_runner(target.runtime, target.artifact, **target.options)
    rss0, start = _rss_bytes(), time.perf_counter()
    runner.load()
    row["load_s"] = time.perf_counter() - start
    rss1 = _rss_bytes()
    if rss0 is not None and rss1 is not None:
        row["load_rss_delta_mb"] = round((rss1 - rss0) / 2**20, 1)
    info = runner.describe()
    row.update(runner=info.to_dict(), precision_executed=info.precision,
               label=_label(target, info.precision) + (" [stale]" if target.stale else "")
               + (" [budget-missed]" if target.build and not target.build["budget_met"] else ""))
    scores = runner.infer(probe)
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise DatasetError(f"{target.artifact} outputs {scores.shape[1:]} scores per image but the run has "
                           f"{len(classes)} classes ({', '.join(classes)}): wrong model or wrong --data")
    return runner


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported platform
        return None


METHOD_TITLES = {"qat": "QAT", "accuracy-control": "accuracy control"}
"""Label suffixes of builds made otherwise than by plain PTQ (any other method, e.g. ``ptq+fallback(2 layers)``,
is shown as recorded)."""


def _label(target: BenchTarget, executed: str | None) -> str:
    built = (target.precision or executed or "?").upper()
    label = f"{RUNTIME_TITLES.get(target.runtime, target.runtime)} {built}"
    if executed and executed.lower() != (target.precision or "").lower():
        label += f" (ran {executed})"
    if target.variant == "f32-hint":
        label += " (f32 hint)"
    method = (target.build or {}).get("method")
    if method and method not in ("ptq", target.precision):  # made otherwise than plain PTQ (or as a float build)
        label += f" {METHOD_TITLES.get(method, method)}"
    return f"{target.run}: {label}" if target.run else label


def _disambiguate_labels(rows: list[dict[str, Any]]) -> None:
    """Duplicate labels (e.g. two int8 IRs) get the artifact key appended."""
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
    for row in rows:
        if seen[row["label"]] > 1:
            row["label"] += f" — {row['key']}"


# -- latency ------------------------------------------------------------------------------------------
def measure_latency(items: list[Measured], head: np.ndarray, config: BenchConfig, steps: _Steps) -> None:
    """The one timing loop. Per batch size: a warm-up of every live artifact (at least one run: lazy
    allocations, per-shape compiles, caches), then ``config.rounds`` rounds in which each live artifact
    re-warms and times its runs, the artifact order rotating every round; then its ``latency_stats``."""
    for batch in config.batch_sizes:
        x = np.ascontiguousarray(head[:batch])
        timed = [m for m in items if m.live]
        rounds: dict[Measured, list[list[float]]] = {m: [] for m in timed}  # timed runs of each completed round
        for m in timed:
            m.attempt(lambda m=m, x=x: [m.runner.infer(x) for _ in range(max(1, config.warmup))])
        for r in range(config.rounds):
            order = [m for m in timed if m.live]
            order = order[r % len(order):] + order[:r % len(order)] if order else order  # rotate
            for m in order:
                steps.status(f"batch {batch} round {r + 1}/{config.rounds} {m.row['label']}")
                m.attempt(lambda m=m, x=x, done=rounds[m]: done.append(_round(m.runner, x, config)))
                steps.advance()
        for m in timed:
            if m.live and rounds[m]:
                m.row["latency"].append(latency_stats([t for times in rounds[m] for t in times],
                                                      [float(np.median(times)) for times in rounds[m]], batch))


def _round(runner: Any, x: np.ndarray, config: BenchConfig) -> list[float]:
    """One artifact's share of a round: a short re-warm, then its timed runs."""
    for _ in range(min(config.warmup, 3)):
        runner.infer(x)
    return _timed_runs(runner, x, config.iterations, config.round_time_s, config.min_iterations)


def _timed_runs(runner: Any, batch: np.ndarray, iterations: int, budget_s: float, minimum: int) -> list[float]:
    """Milliseconds per run: ``iterations`` runs, stopping early once ``budget_s`` is spent (never below ``minimum``)."""
    times = []
    deadline = time.perf_counter() + budget_s
    for i in range(iterations):
        start = time.perf_counter_ns()
        runner.infer(batch)
        times.append((time.perf_counter_ns() - start) / 1e6)
        if i + 1 >= minimum and time.perf_counter() > deadline:
            break
    return times


def latency_stats(samples_ms: Sequence[float], round_medians_ms: Sequence[float], batch: int) -> dict[str, Any]:
    """Summary of timed runs (milliseconds per batch) and the derived throughput."""
    x = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(x, [50, 90, 95, 99])
    stable = float(min(round_medians_ms))
    return {"batch": batch, "runs": int(x.size), "rounds": len(round_medians_ms),
            "mean_ms": float(x.mean()), "std_ms": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min_ms": float(x.min()), "p50_ms": float(p50), "p90_ms": float(p90), "p95_ms": float(p95),
            "p99_ms": float(p99), "max_ms": float(x.max()), "p50_stable_ms": stable,
            "round_p50_ms": [float(m) for m in round_medians_ms],
            "throughput_ips": float(batch * 1000.0 / stable)}


# -- memory --------------------------------------------------------------------------------------------
def measure_memory(items: list[Measured], shape: tuple[int, ...], config: BenchConfig, steps: _Steps) -> None:
    """Peak memory of every live artifact, each in a fresh subprocess (:mod:`edgetl.bench.memory`)."""
    for m in items:
        if m.live:
            steps.status(f"memory {m.row['label']}")
            m.row["memory"] = memory_probe(m.target, shape, steady=config.steady_allocator)
            steps.advance()
