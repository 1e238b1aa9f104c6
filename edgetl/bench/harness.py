"""``benchmark()``: every artifact of one or more runs measured side by side and the reports written,
recorded as the run's ``bench`` stage when they land inside the run folder."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._allocator import steady_allocator
from .._io import utc_now
from ..errors import ConfigError, DatasetError, RegressionError
from ..run.keys import Status
from ..run.manifest import Manifest
from ..run.stage import stage as run_stage
from .accuracy import compare_to_reference, reference_of
from .compare import compare_reports, load_report
from .config import SCHEMA_VERSION, STAGE, BenchConfig
from .discover import BenchTarget, resolve_inputs, check_targets, expand_variants, find_run_dir
from .measure import measure_artifacts
from .memory import MEMORY_METHOD
from .report import write_reports


@dataclass
class BenchReport:
    """What :func:`benchmark` returns: report.json's content, the report folder and the files written."""

    data: dict[str, Any]
    """The report.json content (see docs/bench.md)."""
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.data["results"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == Status.FAILED]

    @property
    def regressions(self) -> list[dict[str, Any]]:
        comparison = self.data.get("comparison") or {}
        return [row for row in comparison.get("rows", []) if row.get("regression")]


def benchmark(run_or_artifacts: str | Path | Sequence[str | Path], config: BenchConfig | None = None,
              progress: bool = True, *, overwrite: bool = False) -> BenchReport:
    """Measure every artifact of a run (or the given artifact files) and write the reports.

    ``config.output`` must be a new or empty folder, or a bench folder edgetl wrote (replaced only with
    ``overwrite``); the default folder is replaced by a rerun. Never inside the data (see edgetl._outputs)."""
    config = config or BenchConfig()
    inputs = [run_or_artifacts] if isinstance(run_or_artifacts, (str, Path)) else list(run_or_artifacts)
    previous = load_report(config.compare) if config.compare else None  # a bad file fails before measuring
    manifest, raw_targets, is_run = resolve_inputs(inputs)
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
    _claim(out_dir, config, raw_targets, manifest, overwrite)
    # record the stage when the reports land inside the (single) run folder, so verify() stays true
    record = out_dir.resolve().is_relative_to(manifest.run_dir.resolve())
    with (run_stage(manifest, STAGE, {**asdict(config), "artifacts": [t.key for t in targets]},
                    digests.get(manifest.run_dir.resolve(), {}), busy_hint="another bench of it is running")
          if record else contextlib.nullcontext()) as st:
        report = measure_report(targets, images, labels, data_source, config, run_dir=manifest.run_dir,
                                model=manifest.model, classes=manifest.classes, progress=progress)
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


def _claim(out_dir: Path, config: BenchConfig, targets: list[BenchTarget], manifest: Manifest,
           overwrite: bool) -> None:
    """Refuse a report folder that edgetl did not write, or one inside the data of any benchmarked run."""
    from .._outputs import BENCH_FOLDER, claim_output, run_data_roots

    runs = {manifest.run_dir.resolve()} | {run.resolve() for t in targets if (run := find_run_dir(t.artifact.parent))}
    roots = [root for run in runs for root in run_data_roots(Manifest.load(run))]
    claim_output(out_dir, BENCH_FOLDER, overwrite=overwrite, explicit=bool(config.output),
                 data_roots=roots + ([Path(config.data)] if config.data else []))


def _load_eval_data(manifest: Manifest, config: BenchConfig) -> tuple[Any, np.ndarray, str]:
    """The evaluation images as :class:`~edgetl.data.EvalImages` (decoded on demand), their labels, the source."""
    from ..data import EvalImages, balanced_sample, run_eval_samples
    from ..preprocessing import PreprocessSpec

    samples = run_eval_samples(manifest, config.data)
    if not samples:
        raise DatasetError("no labelled images to benchmark on: pass --data FOLDER with CLASS/*.jpg")
    if config.limit and config.limit < len(samples):
        samples = sorted(balanced_sample(samples, config.limit, config.seed))
    images = EvalImages(samples, PreprocessSpec.from_dict(manifest.data["preprocessing"]))
    labels = images.labels
    source = str(config.data) if config.data else f"{manifest.run_dir} val split"
    return images, labels, source


def measure_report(targets: list[BenchTarget], images: Any, labels: np.ndarray, data_source: str,
                   config: BenchConfig, *, run_dir: Path, model: dict[str, Any], classes: list[str],
                   progress: bool = False) -> dict[str, Any]:
    """Measure the targets and assemble report.json with the device's fingerprint (``comparison`` is the caller's).

    ``run_dir``, ``model`` and ``classes`` are what the report records of the run: its manifest's, or
    a bundle's bundle.json's (``edgetl.runtime.bench``). ``edgetl bench`` and the bundle runtime's bench
    both time through here."""
    from ..doctor import device_fingerprint

    # before any runner loads: steady latencies (edgetl/_allocator.py); every caller's timings alike
    allocator = config.steady_allocator and steady_allocator()
    items = measure_artifacts(targets, images, labels, classes, config, progress)
    reference = reference_of(items)
    if reference is not None:
        compare_to_reference(items, reference, labels, config)
    results = [m.row for m in items]
    report = {"schema_version": SCHEMA_VERSION, "kind": "edgetl.bench", "created": utc_now(), "edgetl": __version__,
               "run": str(run_dir), "model": model, "classes": classes,
               "config": {k: v for k, v in asdict(config).items() if k not in ("compare", "fail_on_regression")},
               "method": {"latency": "interleaved rounds, artifact order rotated each round; stats pool all timed "
                                     "runs; p50_stable_ms = lowest per-round median (used for comparisons)",
                          "memory": MEMORY_METHOD, "accuracy_ci": "paired bootstrap over images (95%), exact McNemar",
                          "allocator": "glibc, mmap/trim thresholds 1 GiB" if allocator else "default"},
               "data": {"source": data_source, "images": int(len(images)), "input_shape": list(images.shape[1:])},
               "reference": reference.row["label"] if reference is not None else None,
               "results": results, "notes": _notes(results, reference is not None, config, len(images)),
               "comparison": None, "device": device_fingerprint()}
    _add_device_details(report)
    return report


def _notes(results: list[dict[str, Any]], has_reference: bool, config: BenchConfig, n_images: int) -> list[str]:
    """Human-readable verdicts: each drop within noise or significant, skipped/failed/stale artifacts."""
    notes = []
    if not has_reference and config.accuracy:
        notes.append("no FP32 reference ran, so there is no accuracy drop: include checkpoint.pt or an FP32 ONNX")
    for res in results:
        vs = res.get("vs_reference")
        if vs and not vs["is_reference"]:
            lo, hi = vs["ci95_pts"]
            verdict = "within noise" if vs["within_noise"] else "significant"
            notes.append(f"{res['label']}: top-1 drop {vs['top1_drop_pts']:+.2f} pts, 95% CI [{lo:+.2f}, {hi:+.2f}] "
                         f"on {n_images} images -> {verdict}" + _budget_verdict(vs, res.get("build")))
        if res["status"] != "ok":
            notes.append(f"{res['key']} {res['status']}: {res['reason']}")
        if res.get("deploy_runtime") and res["deploy_runtime"] != res["runtime"]:
            notes.append(f"{res['key']} is built for {res['deploy_runtime']} on the device: measured here under "
                         f"{res['runtime']} for its accuracy; its latency here says nothing about {res['deploy_runtime']}")
        if res.get("stale"):
            notes.append(f"{res['key']} is stale ({res['stale']}): its numbers describe an older model; "
                         "re-export it before trusting them")
    if n_images < 300 and config.accuracy:
        notes.append(f"{n_images} evaluation images: one image is {100 / n_images:.2f} pts of accuracy, so small "
                     "drops cannot be resolved")
    return notes


def _budget_verdict(vs: dict[str, Any], build: dict[str, Any] | None) -> str:
    """The drop against the build's budget: the drop itself decides, not only an interval that touches zero."""
    if not build or build.get("max_drop") is None:
        return ""
    over = vs["top1_drop_pts"] > build["max_drop"] + 1e-9
    verdict = "OVER the budget" if over else "within the budget"
    recorded = "" if build["budget_met"] else " (built budget-missed)"
    return f"; {verdict} of {build['max_drop']:g} pts{recorded}"


def _add_device_details(report: dict[str, Any]) -> None:
    """The precision each artifact executed in, and GPU/TensorRT details where a runner reports them."""
    report["device"]["executed_precisions"] = {r["label"]: r["precision_executed"] for r in report["results"]}
    for res in report["results"]:
        extra = (res.get("runner") or {}).get("extra") or {}
        if res["runtime"] == "tensorrt" and extra:
            report["device"]["tensorrt"] = {k: extra.get(k) for k in ("tensorrt_version", "gpu", "compute_capability",
                                                                      "driver") if k in extra}


def _summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Per artifact key: status, first-batch p50 and top-1, recorded as the ``bench`` stage's metrics."""
    out = {}
    for res in report["results"]:
        entry: dict[str, Any] = {"status": res["status"]}
        if res["latency"]:
            entry["p50_ms_batch%d" % res["latency"][0]["batch"]] = round(res["latency"][0]["p50_stable_ms"], 4)
        if res["accuracy"]:
            entry["top1"] = res["accuracy"]["top1"]
        out[res["key"]] = entry
    return out
