"""Which artifacts a benchmark measures: from run manifests (one or several runs) or loose files, each
checked against its recorded sha256, then expanded into runtime variants (:class:`BenchTarget`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends import RUNTIMES, extension_runtimes, runtime_for_suffix
from ..errors import ConfigError, RunFolderError
from ..run.integrity import stale_reason, verified_file
from ..run.manifest import MANIFEST_NAME, Manifest
from ..run.keys import Status
from ..run.records import ArtifactRecord, StageRecord
from ..run.safe_paths import run_file, run_relative
from .config import STAGE, BenchConfig

# views of the runtime table (edgetl/backends/_registry.py): extension -> runtime, runtime -> report title
EXTENSION_RUNTIMES = extension_runtimes()
RUNTIME_TITLES = {name: spec.title for name, spec in RUNTIMES.items()}


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
    run: str | None = None
    """The run's short name when several runs are benchmarked together."""
    deploy_runtime: str | None = None
    """The runtime the artifact is meant for when it differs from the one measuring it here (a Q/DQ ONNX
    measured under ONNX Runtime is built into a TensorRT engine on the device)."""
    build: dict[str, Any] | None = None
    """How its target build made it and whether it met its budget (:func:`build_summary`; None: not a build)."""


def runtime_for_path(path: Path) -> str:
    """The runtime that runs ``path``, from its extension (the runtime table's ``extensions``)."""
    runtime = runtime_for_suffix(path.suffix)
    if runtime is None:
        raise ConfigError(f"cannot tell the runtime of {path}: expected one of "
                          f"{', '.join(sorted(EXTENSION_RUNTIMES))}, or pass a run folder")
    return runtime


def find_run_dir(path: Path) -> Path | None:
    """The run folder holding ``path`` (the nearest parent with an edgetl.json, as spelled, else as resolved)."""
    spelled = Path(os.path.abspath(path))
    for parent in [spelled, *spelled.parents, *path.resolve().parents]:
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
    for stage_name in manifest.stages:
        if stage_name == STAGE:
            continue
        stage = manifest.record(stage_name)
        for rel, record in stage.models().items():
            runtime = record.runtime
            path = _resolve_artifact_file(run_file(manifest.run_dir, rel), runtime)
            key = run_relative(manifest.run_dir, path) if path.exists() else rel
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            # run it as its build recorded: the target's device and runner options (bench options override)
            takes_device = "device" in RUNTIMES[runtime].runner_class().option_names if runtime in RUNTIMES else False
            options = {**(record.runner_options or {}),
                       **({"device": record.device} if record.device and takes_device else {})}
            targets.append(BenchTarget(artifact=path, runtime=runtime, key=key, options=options,
                                       precision=record.precision, format=record.format,
                                       size_bytes=_size_on_disk(path) or record.bytes,
                                       deploy_runtime=record.deploy_runtime, build=build_summary(stage)))
    return targets


def build_summary(stage: StageRecord) -> dict[str, Any] | None:
    """A target build's method, calibration and budget, as its stage recorded them (None for other stages)."""
    m = stage.metrics
    if "drop_points" not in m or "float_top1" not in m:
        return None
    return {"method": m.get("method"), "calibration": m.get("calibration"), "max_drop": m.get("max_drop"),
            "drop_points": m["drop_points"], "budget_met": stage.status != Status.BUDGET_MISSED}


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
        rel = run_relative(run_dir, target.artifact)
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


def _manifest_record(manifest: Manifest, path: Path) -> ArtifactRecord | None:
    """The record of ``path``, or of the folder artifact holding it."""
    rel = run_relative(manifest.run_dir, path)
    for name in manifest.stages:
        for key, record in manifest.record(name).artifacts.items():
            if key == rel or rel.startswith(key.rstrip("/") + "/"):
                return record
    return None


def expand_variants(targets: list[BenchTarget], config: BenchConfig) -> list[BenchTarget]:
    """Runtime options per target: the recorded ones (device, runner options), overridden by the bench's own;
    an OpenVINO FP32 IR becomes a default-hint and a true-FP32 run."""
    expanded = []
    for target in targets:
        if config.runtimes is not None and target.runtime not in config.runtimes:
            continue
        options: dict[str, Any] = dict(target.options)
        if config.threads:
            options["threads"] = config.threads
        if target.runtime == "openvino":
            if config.streams is not None:
                options["streams"] = config.streams
            if config.performance_hint:
                options["performance_hint"] = config.performance_hint
            if (target.precision or "fp32") != "fp32":
                expanded.append(_with(target, options=options))
                continue
            expanded.append(_with(target, options={**options, "precision_hint": None}))
            if config.true_fp32:
                expanded.append(_with(target, variant="f32-hint", key=f"{target.key}#f32-hint",
                                      options={**options, "precision_hint": "f32"}))
        else:
            expanded.append(_with(target, options=options))
    return expanded


def _with(target: BenchTarget, **changes: Any) -> BenchTarget:
    return BenchTarget(**{**asdict(target), **changes})


def resolve_inputs(inputs: Sequence[str | Path]) -> tuple[Manifest, list[BenchTarget], bool]:
    """The manifest describing the inputs and the targets to measure; True when ``inputs`` is one run.

    Inputs are run folders (every artifact they record) and/or artifact files inside run folders. With
    several runs (a model and its pruned child, say) every key and label names its run, and the runs must
    take the same inputs (classes and preprocessing); the first run's evaluation images are used.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("nothing to benchmark: pass a run folder or artifact files")
    manifests: dict[Path, Manifest] = {}
    found: list[tuple[Path, BenchTarget]] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"artifact not found: {path}")
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            manifest = manifests.setdefault(path.resolve(), Manifest.load(path))
            run_targets = discover_artifacts(manifest)
            if not run_targets:
                raise RunFolderError(f"{path} records no runnable artifacts: run `edgetl finetune` / `edgetl export`")
            found += [(path.resolve(), t) for t in run_targets]
            continue
        run_dir = find_run_dir(path.parent)
        if run_dir is None:
            raise RunFolderError(f"{path} is not inside a run folder, so its classes and preprocessing are unknown: "
                                 "benchmark it from its run folder (the one holding edgetl.json)")
        manifest = manifests.setdefault(run_dir.resolve(), Manifest.load(run_dir))
        record = _manifest_record(manifest, path) or ArtifactRecord(bytes=0)
        key = run_relative(run_dir, path)
        found.append((run_dir.resolve(), BenchTarget(
            artifact=path, runtime=record.runtime or runtime_for_path(path), key=key,
            precision=record.precision, format=record.format, size_bytes=_size_on_disk(path),
            deploy_runtime=record.deploy_runtime)))
    first = next(iter(manifests.values()))
    for other in manifests.values():
        if other.classes != first.classes or other.preprocessing != first.preprocessing:
            raise ConfigError(f"{first.run_dir} and {other.run_dir} differ in classes or preprocessing: "
                              "artifacts benchmarked together must take the same inputs")
    if len(manifests) > 1:
        names = _run_names(list(manifests))
        for run_dir, target in found:
            target.run, target.key = names[run_dir], f"{names[run_dir]}/{target.key}"
    targets = list({t.key: t for _, t in found}.values())  # the same file named twice is measured once
    single_run = len(manifests) == 1 and all(p.is_dir() for p in paths)
    return first, targets, single_run


def _run_names(run_dirs: list[Path]) -> dict[Path, str]:
    """Short distinct names for run folders: the folder name, with its parents when names collide."""
    depth = 1
    while True:
        names = {d: "/".join(d.parts[-depth:]) for d in run_dirs}
        if len(set(names.values())) == len(run_dirs) or depth >= max(len(d.parts) for d in run_dirs):
            return names
        depth += 1
