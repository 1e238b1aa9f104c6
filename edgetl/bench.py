"""The benchmark harness: every artifact of a run, side by side, on the same images.

``benchmark(run_or_artifacts, BenchConfig())`` finds the artifacts (from the run manifest, or loose
files whose runtime follows from the extension), and for each one measures:

* load/compile time, artifact size on disk, the precision that actually executed;
* latency over a batch sweep: warm-up, then ``rounds`` rounds that *interleave* the artifacts
  (the order rotates each round), ``iterations`` timed runs per artifact per round. Statistics
  (mean, std, p50/p90/p95/p99) pool every timed run; ``p50_stable_ms`` is the lowest per-round
  median. On a shared machine other processes only ever *add* time, so the least-disturbed round is
  the best estimate of an artifact's own cost, and interleaving spreads a noisy period over every
  artifact instead of penalising whichever ran during it. Comparisons (``--compare``) use it;
* peak memory in a fresh subprocess per artifact (peak RSS, ``VmHWM``; in one process the
  high-water mark would belong to whichever artifact peaked first), reported as the process peak
  and as the delta over the runtime library's own import;
* accuracy on a labelled folder (top-1/top-5/per-class) and, against the float reference (PyTorch
  eager FP32), the top-1 drop in points with a paired bootstrap 95% interval and an exact McNemar
  test on the discordant images, top-1 agreement and max/mean |logit difference|.

A batch size larger than the evaluation set is an error (:class:`ConfigError`): latency batches are
real evaluation images, never repeated ones. An artifact whose runtime is missing is *skipped*
with the reason; one that fails to load or run is *failed* with the reason; neither stops the rest.

The report schema is documented in ``docs/bench.md``; ``SCHEMA_VERSION`` changes when a field
changes meaning or goes away (adding fields does not).
"""

from __future__ import annotations

import base64
import contextlib
import html
import importlib
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._io import atomic_path, read_json, utc_now, write_json, write_text
from .errors import ConfigError, DatasetError, MissingBackendError, RegressionError, RunFolderError
from .run.integrity import stale_reason, verified_file
from .run.manifest import MANIFEST_NAME, Manifest
from .run.stage import stage as run_stage
from ._allocator import steady_allocator
from .metrics import classification_metrics

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STAGE = "bench"
EXTENSION_RUNTIMES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".xml": "openvino",
                      ".engine": "tensorrt", ".plan": "tensorrt"}
RUNTIME_TITLES = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                  "tensorrt": "TensorRT"}
MEMORY_METHOD = ("fresh subprocess per artifact: peak RSS (VmHWM) while loading and running 3 batches of the "
                 "largest size; delta = peak minus RSS after importing the runtime library")
# library imported before timing load(), so load_s is the model's cost, not the library's import
RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


# -- configuration --------------------------------------------------------------------------------
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
            from .backends import RUNNERS

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


# -- what gets measured ----------------------------------------------------------------------------
@dataclass
class BenchTarget:
    """One measurement: an artifact on a runtime with options (an IR may be measured twice)."""

    artifact: Path
    runtime: str
    key: str
    """Stable identity across reports: the artifact path (relative to the run) plus the variant."""
    variant: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    """Precision the artifact was built for (from the manifest), e.g. fp32, fp16, int8."""
    format: str | None = None
    size_bytes: int | None = None
    stage: str | None = None
    """The manifest stage that recorded the artifact."""
    stale: str | None = None
    """Why the artifact no longer reflects its inputs (e.g. ONNX exported from an older checkpoint)."""


@dataclass
class BenchReport:
    data: dict[str, Any]
    """The report.json content (see docs/bench.md)."""
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.data["results"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == "failed"]

    @property
    def regressions(self) -> list[dict[str, Any]]:
        comparison = self.data.get("comparison") or {}
        return [row for row in comparison.get("rows", []) if row.get("regression")]


def runtime_for_path(path: Path) -> str:
    runtime = EXTENSION_RUNTIMES.get(path.suffix.lower())
    if runtime is None:
        raise ConfigError(f"cannot tell the runtime of {path}: expected one of "
                          f"{', '.join(sorted(EXTENSION_RUNTIMES))}, or pass a run folder")
    return runtime


def find_run_dir(path: Path) -> Path | None:
    """The run folder holding ``path`` (the nearest parent with an edgetl.json), if any."""
    for parent in [path, *path.resolve().parents]:
        if (parent / MANIFEST_NAME).is_file():
            return parent
    return None


def _resolve_artifact_file(path: Path, runtime: str) -> Path:
    """A recorded directory (e.g. an IR folder) -> the model file inside it."""
    if path.is_dir():
        suffixes = [s for s, r in EXTENSION_RUNTIMES.items() if r == runtime]
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
        if len(found) == 1:
            return found[0]
    return path


def _size_on_disk(path: Path) -> int | None:
    if not path.exists():
        return None
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    size = path.stat().st_size
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():  # IR weights
        size += path.with_suffix(".bin").stat().st_size
    return size


def discover_artifacts(manifest: Manifest) -> list[BenchTarget]:
    """Every artifact recorded with a ``runtime`` in the manifest's stages, in stage order."""
    targets, seen = [], set()
    for stage_name, stage in manifest.stages.items():
        if stage_name == STAGE:
            continue
        for rel, entry in stage.get("artifacts", {}).items():
            runtime = entry.get("runtime")
            if not runtime:
                continue
            path = _resolve_artifact_file(manifest.run_dir / rel, runtime)
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            key = path.resolve().relative_to(manifest.run_dir.resolve()).as_posix() if path.exists() else rel
            targets.append(BenchTarget(artifact=path, runtime=runtime, key=key, precision=entry.get("precision"),
                                       format=entry.get("format"), size_bytes=_size_on_disk(path) or entry.get("bytes")))
    return targets


def check_targets(targets: list[BenchTarget], verify: bool = True) -> dict[Path, dict[str, str]]:
    """Check each artifact of a run against its recorded sha256 (an :class:`IntegrityError` names the first
    mismatch) and mark the stale ones; the verified sha256s by run folder and run-relative path."""
    manifests: dict[Path, Manifest] = {}
    digests: dict[Path, dict[str, str]] = {}
    for target in targets:
        run_dir = find_run_dir(target.artifact.parent)
        if run_dir is None:
            continue
        manifest = manifests.setdefault(run_dir.resolve(), Manifest.load(run_dir))
        rel = target.artifact.resolve().relative_to(run_dir.resolve()).as_posix()
        found = manifest.producer(rel)
        if found is None:
            if verify:
                verified_file(manifest, rel)  # raises: an unrecorded file cannot be trusted
            continue
        target.stage = found[0]
        target.stale = stale_reason(manifest, found[0])
        companions = [rel[:-4] + ".bin"] if rel.endswith(".xml") and manifest.producer(rel[:-4] + ".bin") else []
        for name in (rel, *companions):
            digests.setdefault(run_dir.resolve(), {})[name] = verified_file(manifest, name, verify=verify)[1]
    return digests


def _manifest_entry(manifest: Manifest, path: Path) -> dict[str, Any]:
    rel = path.resolve().relative_to(manifest.run_dir.resolve()).as_posix()
    for stage in manifest.stages.values():
        for key, entry in stage.get("artifacts", {}).items():
            if key == rel or rel.startswith(key.rstrip("/") + "/"):
                return entry
    return {}


def expand_variants(targets: list[BenchTarget], config: BenchConfig) -> list[BenchTarget]:
    """Runtime options per target; an OpenVINO FP32 IR becomes a default-hint and a true-FP32 run."""
    expanded = []
    for target in targets:
        if config.runtimes is not None and target.runtime not in config.runtimes:
            continue
        options: dict[str, Any] = {}
        if config.threads:
            options["threads"] = config.threads
        if target.runtime == "openvino":
            if config.streams is not None:
                options["streams"] = config.streams
            if config.performance_hint:
                options["performance_hint"] = config.performance_hint
            expanded.append(_with(target, options={**options, "precision_hint": None}))
            if config.true_fp32 and (target.precision or "fp32") == "fp32":
                expanded.append(_with(target, variant="f32-hint", key=f"{target.key}#f32-hint",
                                      options={**options, "precision_hint": "f32"}))
        else:
            expanded.append(_with(target, options=options))
    return expanded


def _with(target: BenchTarget, **changes: Any) -> BenchTarget:
    return BenchTarget(**{**asdict(target), **changes})


# -- statistics ------------------------------------------------------------------------------------
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


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def accuracy_drop(ref_correct: np.ndarray, correct: np.ndarray, resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """Paired top-1 drop (reference minus candidate) in points, with a bootstrap interval over images."""
    ref_correct, correct = np.asarray(ref_correct, bool), np.asarray(correct, bool)
    n = len(correct)
    drop = 100.0 * (ref_correct.mean() - correct.mean())
    rng = np.random.default_rng(seed)
    diff = ref_correct.astype(np.int8) - correct.astype(np.int8)  # +1: only the reference got it right
    boots = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunked: memory stays small for big eval sets
        idx = rng.integers(0, n, size=(min(256, resamples - start), n))
        boots[start:start + len(idx)] = 100.0 * diff[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    b, c = int(np.sum(diff == 1)), int(np.sum(diff == -1))
    within = bool(lo <= 0.0 <= hi)
    return {"top1_drop_pts": float(drop), "ci95_pts": [float(lo), float(hi)], "mcnemar_p": mcnemar_exact_p(b, c),
            "discordant": {"reference_only_correct": b, "candidate_only_correct": c},
            "within_noise": within}


# -- measurement ------------------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported platform
        return None


def _infer_all(runner: Any, images: np.ndarray, batch: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch and start > 0:  # pad: static-batch models take only full batches
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        outputs.append(runner.infer(chunk)[:real])
    return np.concatenate(outputs)


def _timed_runs(runner: Any, batch: np.ndarray, iterations: int, budget_s: float, minimum: int) -> list[float]:
    times = []
    deadline = time.perf_counter() + budget_s
    for i in range(iterations):
        start = time.perf_counter_ns()
        runner.infer(batch)
        times.append((time.perf_counter_ns() - start) / 1e6)
        if i + 1 >= minimum and time.perf_counter() > deadline:
            break
    return times


def _memory_probe(target: BenchTarget, input_shape: tuple[int, ...], runs: int = 3,
                  steady: bool = True) -> dict[str, Any]:
    """Peak RSS of a fresh process that imports the runtime, loads the artifact and runs it."""
    request = json.dumps({"runtime": target.runtime, "artifact": str(target.artifact), "options": target.options,
                          "shape": list(input_shape), "runs": runs, "steady_allocator": steady})
    code = "import sys, edgetl.bench as b; b._probe_main(sys.argv[1])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, request], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"method": MEMORY_METHOD, "error": "memory probe timed out after 600 s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": MEMORY_METHOD, "error": f"memory probe failed: {tail[:300]}"}
    return {"method": MEMORY_METHOD, **json.loads(lines[-1])}


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _probe_main(request_json: str) -> None:
    """Body of the memory-probe subprocess (prints one JSON line).

    Linux keeps ``ru_maxrss`` across ``execve``, so a child started by a big parent inherits the
    parent's peak; the probe reads ``VmHWM`` (per address space) instead and resets it after the
    runtime import (``/proc/self/clear_refs``), so the peak delta is the artifact's own.
    """
    import resource

    from .backends import create_runner

    request = json.loads(request_json)
    if request.get("steady_allocator", True):
        steady_allocator()
    try:
        importlib.import_module(RUNTIME_MODULES[request["runtime"]])
    except ImportError:
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak-RSS counter to the current RSS
    except OSError:
        pass
    baseline_kb = _proc_status_kb("VmRSS")
    runner = create_runner(request["runtime"], request["artifact"], **request["options"])
    start = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - start
    batch = np.random.default_rng(0).standard_normal(request["shape"]).astype(np.float32)
    for _ in range(request["runs"]):
        runner.infer(batch)
    peak_kb = _proc_status_kb("VmHWM")
    if peak_kb is None or baseline_kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        scale = 1 / 1024 if sys.platform == "darwin" else 1
        peak_kb, baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, baseline_kb or 0
    print(json.dumps({"batch": request["shape"][0], "peak_rss_mb": round(peak_kb / 1024, 1),
                      "runtime_import_rss_mb": round(baseline_kb / 1024, 1),
                      "model_peak_delta_mb": round((peak_kb - baseline_kb) / 1024, 1), "cold_load_s": round(load_s, 3)}))


def _load_eval_data(manifest: Manifest, config: BenchConfig) -> tuple[np.ndarray, np.ndarray, str]:
    from .data import balanced_sample, load_array, run_eval_samples
    from .preprocessing import PreprocessSpec

    samples = run_eval_samples(manifest, config.data)
    if not samples:
        raise DatasetError("no labelled images to benchmark on: pass --data FOLDER with CLASS/*.jpg")
    if config.limit and config.limit < len(samples):
        samples = sorted(balanced_sample(samples, config.limit, config.seed))
    images, labels = load_array(samples, PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    source = str(config.data) if config.data else f"{manifest.run_dir} val split"
    return images, labels, source


def _load_manifests(inputs: Sequence[str | Path]) -> tuple[Manifest, list[BenchTarget], bool]:
    """The manifest describing the inputs and the targets to measure; True when ``inputs`` is one run."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("nothing to benchmark: pass a run folder or artifact files")
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / MANIFEST_NAME).is_file():
        manifest = Manifest.load(paths[0])
        targets = discover_artifacts(manifest)
        if not targets:
            raise RunFolderError(f"{paths[0]} records no runnable artifacts: run `edgetl finetune` / `edgetl export`")
        return manifest, targets, True
    manifests: dict[Path, Manifest] = {}
    targets = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"artifact not found: {path}")
        runtime = runtime_for_path(path)
        run_dir = find_run_dir(path.parent)
        if run_dir is None:
            raise RunFolderError(f"{path} is not inside a run folder, so its classes and preprocessing are unknown: "
                                 "benchmark it from its run folder (the one holding edgetl.json)")
        manifest = manifests.setdefault(run_dir.resolve(), Manifest.load(run_dir))
        entry = _manifest_entry(manifest, path)
        key = path.resolve().relative_to(run_dir.resolve()).as_posix()
        targets.append(BenchTarget(artifact=path, runtime=entry.get("runtime", runtime), key=key,
                                   precision=entry.get("precision"), format=entry.get("format"),
                                   size_bytes=_size_on_disk(path)))
    first = next(iter(manifests.values()))
    for other in manifests.values():
        if other.classes != first.classes or other.data["preprocessing"] != first.data["preprocessing"]:
            raise ConfigError(f"{first.run_dir} and {other.run_dir} differ in classes or preprocessing: "
                              "artifacts benchmarked together must take the same inputs")
    return first, targets, False


def _label(target: BenchTarget, executed: str | None) -> str:
    built = (target.precision or executed or "?").upper()
    label = f"{RUNTIME_TITLES.get(target.runtime, target.runtime)} {built}"
    if executed and executed.lower() != (target.precision or "").lower():
        label += f" (ran {executed})"
    if target.variant == "f32-hint":
        label += " (f32 hint)"
    return label


def benchmark(run_or_artifacts: str | Path | Sequence[str | Path], config: BenchConfig | None = None,
              progress: bool = True) -> BenchReport:
    """Measure every artifact of a run (or the given artifact files) and write the reports."""
    from ._console import progress_bar
    from .backends import create_runner
    from .doctor import device_fingerprint

    config = config or BenchConfig()
    if config.steady_allocator:
        steady_allocator()  # before any runtime allocates (see edgetl/_allocator.py)
    inputs = [run_or_artifacts] if isinstance(run_or_artifacts, (str, Path)) else list(run_or_artifacts)
    previous = load_report(config.compare) if config.compare else None  # a bad file fails before measuring
    manifest, raw_targets, is_run = _load_manifests(inputs)
    digests = check_targets(raw_targets, config.verify)
    targets = expand_variants(raw_targets, config)
    if not targets:
        raise ConfigError(f"no artifacts left to benchmark (runtimes={config.runtimes})")
    images, labels, data_source = _load_eval_data(manifest, config)
    too_big = [b for b in config.batch_sizes if b > len(images)]
    if too_big:
        raise ConfigError(f"batch size {max(too_big)} is larger than the {len(images)} evaluation images: "
                          f"use --batch <= {len(images)} or a bigger --data folder")
    out_dir = Path(config.output) if config.output else (manifest.run_dir / "bench" if is_run or len(
        {find_run_dir(t.artifact.parent) for t in raw_targets}) == 1 else Path("bench"))
    # record the stage when the reports land inside the (single) run folder, so verify() stays true
    record = out_dir.resolve().is_relative_to(manifest.run_dir.resolve())
    with (run_stage(manifest, STAGE, {**asdict(config), "artifacts": [t.key for t in targets]},
                    digests.get(manifest.run_dir.resolve(), {}), busy_hint="another bench of it is running")
          if record else contextlib.nullcontext()) as st:
        report = _measure(targets, manifest, images, labels, data_source, config, progress, create_runner,
                          progress_bar)
        report["device"] = device_fingerprint()
        _add_device_details(report)
        if config.compare:
            report["comparison"] = compare_reports(previous, report, config.fail_on_regression)
        files = write_reports(report, out_dir)
        if st is not None:
            for path in files.values():
                st.artifact(path)
            st.metrics.update(_summary_metrics(report))
    result = BenchReport(report, out_dir, files)
    if config.fail_on_regression is not None and result.regressions:
        worst = max(result.regressions, key=lambda r: r["change_pct"])
        error = RegressionError(f"{len(result.regressions)} latency regression(s) beyond {config.fail_on_regression}%: "
                              f"worst {worst['label']} batch {worst['batch']} {worst['old_ms']:.3f} -> "
                              f"{worst['new_ms']:.3f} ms ({worst['change_pct']:+.1f}%); report in {out_dir}")
        error.report = result  # type: ignore[attr-defined]  # so a caller can still show the tables
        raise error
    return result


def _measure(targets, manifest, images, labels, data_source, config, progress, create_runner, progress_bar):
    classes = manifest.classes
    results: list[dict[str, Any]] = []
    runners: dict[int, Any] = {}
    logits: dict[int, np.ndarray] = {}
    for i, target in enumerate(targets):
        res = {"label": f"{RUNTIME_TITLES.get(target.runtime, target.runtime)} {target.precision or ''}".strip(),
               "key": target.key, "artifact": str(target.artifact), "runtime": target.runtime,
               "format": target.format, "variant": target.variant, "options": target.options,
               "precision_artifact": target.precision, "precision_executed": None, "size_bytes": target.size_bytes,
               "status": "ok", "reason": None, "load_s": None, "load_rss_delta_mb": None, "runner": None,
               "latency": [], "memory": None, "accuracy": None, "vs_reference": None, "stale": target.stale}
        results.append(res)
        try:
            try:
                importlib.import_module(RUNTIME_MODULES.get(target.runtime, target.runtime))
            except ImportError:
                pass  # the runner raises MissingBackendError with the install hint
            runner = create_runner(target.runtime, target.artifact, **target.options)
            rss0, start = _rss_bytes(), time.perf_counter()
            runner.load()
            res["load_s"] = time.perf_counter() - start
            rss1 = _rss_bytes()
            if rss0 is not None and rss1 is not None:
                res["load_rss_delta_mb"] = round((rss1 - rss0) / 2**20, 1)
            info = runner.describe()
            res["runner"] = info.to_dict()
            res["precision_executed"] = info.precision
            res["label"] = _label(target, info.precision) + (" [stale]" if target.stale else "")
            probe = runner.infer(images[:1])
            if probe.ndim != 2 or probe.shape[1] != len(classes):
                raise DatasetError(f"{target.artifact} outputs {probe.shape[1:]} scores per image but the run has "
                                   f"{len(classes)} classes ({', '.join(classes)}): wrong model or wrong --data")
            runners[i] = runner
        except MissingBackendError as exc:
            res.update(status="skipped", reason=str(exc))
        except Exception as exc:  # one broken artifact must not hide the others' numbers
            log.debug("artifact %s failed", target.artifact, exc_info=True)
            res.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
    for res in results:
        if res["status"] != "ok":
            log.warning("%s %s: %s", res["status"], res["key"], res["reason"])
    # duplicate labels (e.g. two int8 IRs): disambiguate with the path
    seen: dict[str, int] = {}
    for res in results:
        seen[res["label"]] = seen.get(res["label"], 0) + 1
    for res in results:
        if seen[res["label"]] > 1:
            res["label"] += f" — {res['key']}"

    ok = list(runners)
    n_steps = (len(ok) if config.accuracy else 0) + len(ok) * len(config.batch_sizes) * config.rounds + (
        len(ok) if config.memory else 0)
    with progress_bar(progress) as bar:
        task = bar.add_task("bench", total=max(n_steps, 1), status="")
        if config.accuracy:
            for i in ok:
                bar.update(task, status=f"accuracy {results[i]['label']}")
                _guard(results[i], runners, i, lambda i=i: logits.__setitem__(
                    i, _infer_all(runners[i], images, config.accuracy_batch)))
                if i in logits:
                    results[i]["accuracy"] = classification_metrics(logits[i], labels, classes)
                bar.advance(task)
        for batch in config.batch_sizes:
            x = np.ascontiguousarray(images[:batch])
            samples: dict[int, list[float]] = {i: [] for i in ok}
            medians: dict[int, list[float]] = {i: [] for i in ok}
            for i in ok:  # first warm-up, at least one run (lazy allocations, per-shape compiles, caches)
                _guard(results[i], runners, i, lambda i=i: [runners[i].infer(x) for _ in range(max(1, config.warmup))])
            for r in range(config.rounds):
                order = list(runners)
                order = order[r % len(order):] + order[:r % len(order)] if order else order  # rotate
                for i in order:
                    bar.update(task, status=f"batch {batch} round {r + 1}/{config.rounds} {results[i]['label']}")

                    def one_round(i=i):
                        for _ in range(min(config.warmup, 3)):
                            runners[i].infer(x)
                        times = _timed_runs(runners[i], x, config.iterations, config.round_time_s,
                                            config.min_iterations)
                        samples[i].extend(times)
                        medians[i].append(float(np.median(times)))
                    _guard(results[i], runners, i, one_round)
                    bar.advance(task)
            for i in ok:
                if i in runners and samples[i]:
                    results[i]["latency"].append(latency_stats(samples[i], medians[i], batch))
        if config.memory:
            shape = (max(config.batch_sizes), *images.shape[1:])
            for i in list(runners):
                bar.update(task, status=f"memory {results[i]['label']}")
                results[i]["memory"] = _memory_probe(targets[i], shape, steady=config.steady_allocator)
                bar.advance(task)
    for runner in runners.values():
        runner.close()

    reference = next((i for i in logits if targets[i].runtime == "torch" and results[i]["precision_executed"] == "fp32"),
                     next((i for i in logits if results[i]["precision_executed"] == "fp32"), None))
    if reference is not None:
        ref_correct = logits[reference].argmax(1) == labels
        ref_p50 = {s["batch"]: s["p50_stable_ms"] for s in results[reference]["latency"]}
        for i, res in enumerate(results):
            if i not in logits:
                continue
            vs = accuracy_drop(ref_correct, logits[i].argmax(1) == labels, config.bootstrap, config.seed)
            diff = np.abs(logits[i] - logits[reference])
            vs.update(reference=results[reference]["label"], is_reference=i == reference,
                      top1_agreement=float(np.mean(logits[i].argmax(1) == logits[reference].argmax(1))),
                      max_abs_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                      speedup_vs_reference={str(s["batch"]): ref_p50[s["batch"]] / s["p50_stable_ms"]
                                            for s in res["latency"] if s["batch"] in ref_p50})
            res["vs_reference"] = vs
    notes = _notes(results, reference, config, len(images))
    return {"schema_version": SCHEMA_VERSION, "kind": "edgetl.bench", "created": utc_now(), "edgetl": __version__,
            "run": str(manifest.run_dir), "model": manifest.model, "classes": classes,
            "config": {k: v for k, v in asdict(config).items() if k not in ("compare", "fail_on_regression")},
            "method": {"latency": "interleaved rounds, artifact order rotated each round; stats pool all timed runs; "
                                  "p50_stable_ms = lowest per-round median (used for comparisons)",
                       "memory": MEMORY_METHOD, "accuracy_ci": "paired bootstrap over images (95%), exact McNemar",
                       "allocator": "glibc, mmap/trim thresholds 1 GiB" if config.steady_allocator and
                       steady_allocator() else "default"},
            "data": {"source": data_source, "images": int(len(images)), "input_shape": list(images.shape[1:])},
            "reference": results[reference]["label"] if reference is not None else None,
            "results": results, "notes": notes, "comparison": None}


def _guard(res: dict[str, Any], runners: dict[int, Any], i: int, func) -> None:
    """Run one measurement step; a failure marks the artifact failed and drops it from later steps."""
    if i not in runners:
        return
    try:
        func()
    except Exception as exc:
        log.debug("artifact %s failed", res["artifact"], exc_info=True)
        res.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        runners.pop(i).close()


def _notes(results, reference, config, n_images) -> list[str]:
    notes = []
    if reference is None and config.accuracy:
        notes.append("no FP32 reference ran, so there is no accuracy drop: include checkpoint.pt or an FP32 ONNX")
    for res in results:
        vs = res.get("vs_reference")
        if vs and not vs["is_reference"]:
            lo, hi = vs["ci95_pts"]
            verdict = "within noise" if vs["within_noise"] else "significant"
            notes.append(f"{res['label']}: top-1 drop {vs['top1_drop_pts']:+.2f} pts, 95% CI [{lo:+.2f}, {hi:+.2f}] "
                         f"on {n_images} images -> {verdict}")
        if res["status"] != "ok":
            notes.append(f"{res['key']} {res['status']}: {res['reason']}")
        if res.get("stale"):
            notes.append(f"{res['key']} is stale ({res['stale']}): its numbers describe an older model; "
                         "re-export it before trusting them")
    if n_images < 300 and config.accuracy:
        notes.append(f"{n_images} evaluation images: one image is {100 / n_images:.2f} pts of accuracy, so small "
                     "drops cannot be resolved")
    return notes


def _add_device_details(report: dict[str, Any]) -> None:
    """The precision each artifact executed in, and GPU/TensorRT details where a runner reports them."""
    report["device"]["executed_precisions"] = {r["label"]: r["precision_executed"] for r in report["results"]}
    for res in report["results"]:
        extra = (res.get("runner") or {}).get("extra") or {}
        if res["runtime"] == "tensorrt" and extra:
            report["device"]["tensorrt"] = {k: extra.get(k) for k in ("tensorrt_version", "gpu", "compute_capability",
                                                                      "driver") if k in extra}


def _summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for res in report["results"]:
        entry: dict[str, Any] = {"status": res["status"]}
        if res["latency"]:
            entry["p50_ms_batch%d" % res["latency"][0]["batch"]] = round(res["latency"][0]["p50_stable_ms"], 4)
        if res["accuracy"]:
            entry["top1"] = res["accuracy"]["top1"]
        out[res["key"]] = entry
    return out


# -- comparison --------------------------------------------------------------------------------------
def load_report(path: str | Path) -> dict[str, Any]:
    """An earlier report.json for ``--compare``, checked so that comparing with it cannot fail later."""
    data = read_json(path, ConfigError, f"--compare report not found: {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not an edgetl bench report: its top level is a JSON {_json_type(data)}, "
                          "not an object")
    if data.get("kind") != "edgetl.bench" or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{path} is not an edgetl bench report with schema_version {SCHEMA_VERSION}")
    problem = _report_problem(data)
    if problem:
        raise ConfigError(f"{path} is a damaged edgetl bench report: {problem}; compare with another report.json")
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _report_problem(data: dict[str, Any]) -> str | None:
    """What in a bench report :func:`compare_reports` could not read, or None."""
    results = data.get("results")
    if not isinstance(results, list):
        return f'no "results" list (found a JSON {_json_type(results)})'
    for i, res in enumerate(results):
        if not isinstance(res, dict) or not isinstance(res.get("key"), str):
            return f'results[{i}] is not an object with a "key"'
        latency = res.get("latency", [])
        if not isinstance(latency, list) or not all(
                isinstance(s, dict) and isinstance(s.get("batch"), int) and _positive(s.get("p50_stable_ms"))
                for s in latency):
            return f'results[{i}] ({res["key"]}) has a latency that is not a list of batch / p50_stable_ms entries'
        accuracy = res.get("accuracy") or {}
        if not isinstance(accuracy, dict) or _json_type(accuracy.get("top1")) not in ("number", "null"):
            return f'results[{i}] ({res["key"]}) has an accuracy that is not an object with a numeric "top1"'
    device = data.get("device") or {}
    if not isinstance(device, dict) or not isinstance(device.get("cpu", {}), dict):
        return '"device" is not an object with a "cpu" object'
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def compare_reports(old: dict[str, Any], new: dict[str, Any], fail_pct: float | None = None) -> dict[str, Any]:
    """Per artifact and batch: old and new p50_stable_ms, change in percent (positive = slower)."""
    old_by_key = {r["key"]: r for r in old["results"]}
    rows, only_new = [], []
    for res in new["results"]:
        before = old_by_key.get(res["key"])
        if before is None:
            only_new.append(res["key"])
            continue
        old_lat = {s["batch"]: s for s in before.get("latency", [])}
        for stat in res.get("latency", []):
            prev = old_lat.get(stat["batch"])
            if prev is None:
                continue
            change = 100.0 * (stat["p50_stable_ms"] - prev["p50_stable_ms"]) / prev["p50_stable_ms"]
            row = {"key": res["key"], "label": res["label"], "batch": stat["batch"], "old_ms": prev["p50_stable_ms"],
                   "new_ms": stat["p50_stable_ms"], "change_pct": change,
                   "regression": bool(fail_pct is not None and change > fail_pct)}
            old_top1 = (before.get("accuracy") or {}).get("top1")
            new_top1 = (res.get("accuracy") or {}).get("top1")
            if old_top1 is not None and new_top1 is not None:
                row["top1_change_pts"] = 100.0 * (new_top1 - old_top1)
            rows.append(row)
    new_keys = {r["key"] for r in new["results"]}
    old_cpu = (old.get("device") or {}).get("cpu", {}).get("model")
    new_cpu = (new.get("device") or {}).get("cpu", {}).get("model")
    return {"old_created": old.get("created"), "threshold_pct": fail_pct, "rows": rows, "only_new": only_new,
            "only_old": [k for k in old_by_key if k not in new_keys],
            "same_cpu": old_cpu == new_cpu, "old_cpu": old_cpu}


# -- reports -----------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One flat row per artifact and batch, shared by the terminal table, Markdown and HTML."""
    rows = []
    for res in report["results"]:
        acc, vs, mem = res.get("accuracy") or {}, res.get("vs_reference") or {}, res.get("memory") or {}
        common = {
            "artifact": res["label"], "ran": res["precision_executed"] or "—",
            "size": _fmt(res["size_bytes"] / 2**20 if res["size_bytes"] else None, ".1f", " MB"),
            "load": _fmt(res["load_s"], ".2f", " s"),
            "mem": _fmt(mem.get("model_peak_delta_mb"), ".0f", " MB") if "error" not in mem else "error",
            "top1": _fmt(100 * acc["top1"] if acc else None, ".2f", "%"),
            "drop": ("ref" if vs.get("is_reference") else
                     f"{vs['top1_drop_pts']:+.2f} [{vs['ci95_pts'][0]:+.1f},{vs['ci95_pts'][1]:+.1f}]"
                     + (" ~" if vs["within_noise"] else " !")) if vs else "—",
            "agree": _fmt(100 * vs["top1_agreement"] if vs else None, ".1f", "%"),
            "maxdiff": _fmt(vs.get("max_abs_logit_diff"), ".2e"),
        }
        if res["status"] != "ok" or not res["latency"]:
            rows.append({**common, "batch": "—", "p50": res["status"], "p90": "", "p99": "", "mean": "", "ips": "",
                         "speedup": "", "reason": res["reason"] or ""})
            continue
        for stat in res["latency"]:
            speed = (vs.get("speedup_vs_reference") or {}).get(str(stat["batch"]))
            rows.append({**common, "batch": str(stat["batch"]), "p50": f"{stat['p50_stable_ms']:.3f}",
                         "p90": f"{stat['p90_ms']:.3f}", "p99": f"{stat['p99_ms']:.3f}",
                         "mean": f"{stat['mean_ms']:.3f}±{stat['std_ms']:.3f}", "ips": f"{stat['throughput_ips']:.1f}",
                         "speedup": _fmt(speed, ".2f", "x"), "reason": ""})
    return rows


COLUMNS = [("artifact", "artifact"), ("ran", "ran as"), ("batch", "batch"), ("p50", "p50 ms"), ("p90", "p90 ms"),
           ("p99", "p99 ms"), ("mean", "mean±std ms"), ("ips", "img/s"), ("speedup", "vs ref"), ("top1", "top-1"),
           ("drop", "drop pts [95% CI]"), ("agree", "agree"), ("maxdiff", "max|Δlogit|"), ("load", "load"),
           ("mem", "mem Δ"), ("size", "size")]


SUMMARY_COLUMNS = [("artifact", "artifact"), ("ran", "ran"), ("p50", "p50 ms"),
                   ("speedup", "vs ref"), ("top1", "top-1"), ("drop", "drop [95% CI]")]


def render_table(report: dict[str, Any], columns: list[tuple[str, str]] | None = None):
    """The report as a rich Table (the CLI prints it); ``SUMMARY_COLUMNS`` (one batch size) fits 80 columns."""
    columns = columns or COLUMNS
    from rich.table import Table
    from rich.text import Text

    cpu = report["device"]["cpu"]
    table = Table(title=f"edgetl bench — {report['data']['images']} images, {cpu.get('model')}, "
                        f"{cpu.get('usable_cores')} cores", title_justify="left")
    for key, title in columns:
        table.add_column(title, justify="left" if key in ("artifact", "ran", "drop") else "right",
                         no_wrap=key != "artifact", min_width=16 if key == "artifact" else None)
    for row in _rows(report):
        style = "dim" if row["p50"] in ("skipped", "failed") else None
        table.add_row(*(Text(row[k]) for k, _ in columns), style=style)
    return table


def render_comparison(comparison: dict[str, Any]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"vs {comparison.get('old_created')} (p50_stable_ms; + is slower)", title_justify="left")
    for title in ("artifact", "batch", "old ms", "new ms", "change", "top-1 Δ pts"):
        table.add_column(title, justify="left" if title == "artifact" else "right")
    for row in comparison["rows"]:
        colour = "red" if row["regression"] else ("green" if row["change_pct"] < 0 else None)
        change = f"[{colour}]{row['change_pct']:+.1f}%[/{colour}]" if colour else f"{row['change_pct']:+.1f}%"
        table.add_row(Text(row["label"]), str(row["batch"]), f"{row['old_ms']:.3f}", f"{row['new_ms']:.3f}", change,
                      _fmt(row.get("top1_change_pts"), "+.2f"))
    return table


def render_markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    cpu = dev["cpu"]
    lines = [f"# edgetl bench — {report['model'].get('name', '')}", "",
             f"- created: {report['created']}, edgetl {report['edgetl']}, schema {report['schema_version']}",
             f"- data: {report['data']['source']} ({report['data']['images']} images, input "
             f"{'x'.join(map(str, report['data']['input_shape']))})",
             f"- device: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores), {dev['os']}"
             + ("; GPUs: " + ", ".join(g["name"] for g in dev["gpus"]) if dev.get("gpus") else ""),
             f"- reference (float model): {report['reference'] or 'none'}",
             f"- method: {report['method']['latency']}", "",
             "p50 = lowest per-round median (ms per batch); drop = reference top-1 minus this top-1, in points, "
             "with a paired bootstrap 95% CI; `~` within noise (CI includes 0), `!` significant.", ""]
    header = [title.replace("|", "\\|") for _, title in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _rows(report):
        lines.append("| " + " | ".join(row[k].replace("|", "\\|") for k, _ in COLUMNS) + " |")
    skipped = [r for r in report["results"] if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped or failed", ""] + [f"- `{r['key']}` {r['status']}: {r['reason']}" for r in skipped]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    comp = report.get("comparison")
    if comp:
        lines += ["", f"## Compared with {comp['old_created']}", "", "| artifact | batch | old ms | new ms | change |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['batch']} | {r['old_ms']:.3f} | {r['new_ms']:.3f} | {r['change_pct']:+.1f}%"
                  f"{' **regression**' if r['regression'] else ''} |" for r in comp["rows"]]
    lines += ["", "![accuracy vs latency](accuracy_latency.png)", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any], png: bytes | None) -> str:
    esc = html.escape
    rows = _rows(report)
    head = "".join(f"<th>{esc(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(r[k])}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows)
    img = (f'<img alt="accuracy vs latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "<p>(no plot: no artifact has both latency and accuracy)</p>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.get("notes", []))
    cpu = report["device"]["cpu"]
    device = json.dumps(report["device"], indent=1)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgetl bench — {esc(str(report['model'].get('name', '')))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{background:#f2f2f2}}img{{max-width:900px;width:100%}}pre{{background:#f7f7f7;padding:1em;font-size:12px}}</style>
</head><body>
<h1>edgetl bench — {esc(str(report['model'].get('name', '')))}</h1>
<p>{esc(report['data']['source'])}: {report['data']['images']} images · {esc(str(cpu.get('model')))},
{cpu.get('usable_cores')} usable cores · reference: {esc(str(report['reference']))} · {esc(report['created'])}</p>
{img}
<h2>Results</h2>
<p>p50 = lowest per-round median latency (ms per batch); drop = reference top-1 minus this top-1 in points with a
paired bootstrap 95% CI (~ within noise, ! significant).</p>
<table><tr>{head}</tr>{body}</table>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Method</h2><pre>{esc(json.dumps(report['method'], indent=1))}</pre>
<h2>Device</h2><pre>{esc(device)}</pre>
</body></html>
"""


def plot_accuracy_latency(report: dict[str, Any], path: Path) -> Path | None:
    """Top-1 accuracy against batch-1 (smallest batch) p50 latency, one labelled point per artifact."""
    points = [r for r in report["results"] if r.get("accuracy") and r.get("latency")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    colours = {"torch": "#ee4c2c", "onnxruntime": "#4b6cb7", "openvino": "#6a1b9a", "tensorrt": "#76b900"}
    markers = {"fp32": "o", "bf16": "s", "fp16": "s", "int8": "D"}
    batch = min(s["batch"] for r in points for s in r["latency"])
    fig, ax = plt.subplots(figsize=(10, 6.4))
    placed: list[tuple[float, float, dict[str, Any]]] = []
    for res in points:
        stat = next((s for s in res["latency"] if s["batch"] == batch), None)
        if stat is None:
            continue
        placed.append((stat["p50_stable_ms"], 100 * res["accuracy"]["top1"], res))
    xs, ys = [p[0] for p in placed], [p[1] for p in placed]
    if xs and max(xs) / max(min(xs), 1e-9) > 6:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    pad = max(1.0, (max(ys) - min(ys)) * 0.6)
    ax.set_ylim(max(0, min(ys) - pad), min(100.5, max(ys) + pad))
    if ax.get_xscale() == "log":
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    else:
        ax.set_xlim(0, max(xs) * 1.2)
    # numbered points + a legend below the axes: labels never collide, even where points coincide
    for number, (x, y, res) in enumerate(sorted(placed, key=lambda p: p[0]), start=1):
        base = (res.get("precision_executed") or "").split("+")[0]
        vs = res.get("vs_reference") or {}
        sub = "reference" if vs.get("is_reference") else (
            f"drop {vs['top1_drop_pts']:+.2f} pts" + (" (within noise)" if vs.get("within_noise") else "")
            if vs else "")
        ax.scatter([x], [y], s=110, color=colours.get(res["runtime"], "#555"), marker=markers.get(base, "o"),
                   edgecolor="white", linewidth=1.2, zorder=3, alpha=0.85,
                   label=f"{number}  {res['label']}: {x:.2f} ms, {100 * res['accuracy']['top1']:.2f}% · {sub}")
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(0, 9 + 9 * (number % 2)),
                    ha="center", fontsize=9, fontweight="bold", color="#222")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=1, fontsize=9, frameon=False)
    ref = next((r for _, _, r in placed if (r.get("vs_reference") or {}).get("is_reference")), None)
    if ref:
        ax.axhline(100 * ref["accuracy"]["top1"], color="#888", ls="--", lw=1, zorder=1)
    ax.set_xlabel(f"latency at batch {batch}: p50 ms (lowest round median) — lower is better")
    ax.set_ylabel("top-1 accuracy (%)")
    cpu = report["device"]["cpu"]
    ax.set_title(f"{report['model'].get('name', 'model')}: accuracy vs latency\n"
                 f"{report['data']['images']} val images · {cpu.get('model')} · {cpu.get('usable_cores')} cores"
                 " · dashed: float reference", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=150, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md, report.html (plot embedded) and accuracy_latency.png, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": write_json(out_dir / "report.json", report)}
    png = plot_accuracy_latency(report, out_dir / "accuracy_latency.png")
    if png:
        files["plot"] = png
    files["markdown"] = write_text(out_dir / "report.md", render_markdown(report))
    files["html"] = write_text(out_dir / "report.html", render_html(report, png.read_bytes() if png else None))
    return files


__all__ = ["BenchConfig", "BenchReport", "BenchTarget", "SCHEMA_VERSION", "accuracy_drop", "benchmark",
           "compare_reports", "discover_artifacts", "latency_stats", "load_report", "mcnemar_exact_p",
           "parse_batch_sizes", "render_comparison", "render_markdown", "render_table", "write_reports"]

