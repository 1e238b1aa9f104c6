"""``edgetl package``: a run's artifact for one target, as a bundle an app developer drops into an app.

    bundle.json     what the app needs to feed the model and read its answers (schema in docs/bundles.md)
    labels.txt      one class name per line, in index order
    model/          the target's artifacts (IR + build.json; Q/DQ or FP16 ONNX + build.json; the engine
                    and its fingerprint when one was compiled)
    README.md       Python and C++ usage, what is inside
    cpp/            the C++ samples (edgetl/runtime/cpp), copied verbatim

Every artifact is checked against the sha256 its stage recorded before it is trusted. The model files are
copied untouched, except that the IR's ``model.xml`` gains an ``rt_info/model_info`` section (OpenVINO
Model API, DL Streamer) and ONNX files gain ``metadata_props``; the engine stays raw. bundle.json records
the sha256 of every file as bundled. The bundle is written beside the run (staging, then one rename).
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_path, sha256, staging_dir, utc_now, write_json
from .errors import AccuracyBudgetError, RunFolderError
from .run.builds import built, choose_build
from .run.integrity import budget_miss, superseded_by, verified_file
from .run.keys import BENCH, QAT_TRAINING_DIR, StageKey, Status
from .run.manifest import Manifest
from .run.records import ArtifactRecord
from .runtime import SCHEMA_VERSION
from .runtime.bundle import BUNDLE_FILE, LABELS_FILE

log = logging.getLogger(__name__)
LEFT_OUT = ("sensitivity.json", "layers.json", "timing.cache")
"""Stage files that are diagnostics, not deployment: not bundled."""
CPP_SAMPLES = Path(__file__).parent / "runtime" / "cpp"


@dataclass
class PackageConfig:
    """What to package. Every field maps to one ``edgetl package`` option."""

    target: str = "intel-cpu"
    """Device profile whose artifact is packaged (intel-cpu, jetson, ...; see `edgetl targets`)."""
    precision: str | None = None
    """Precision of the artifact [default: the only one built for the target, else the target's default]."""
    folder: bool = False
    """Write an unpacked folder instead of a .tar.gz."""
    output: str | None = None
    """Bundle path [default: RUN/bundle-TARGET-PRECISION.tar.gz, or the folder of that name]."""
    verify: bool = True
    """Check every artifact against the sha256 its stage recorded (False: package edited files as they are)."""
    allow_budget_miss: bool = False
    """Package a build that missed its accuracy budget (recorded budget-missed; bundle.json says so)."""


@dataclass
class PackageResult:
    path: Path
    meta: dict[str, Any]


def package(run: str | Path, config: PackageConfig | None = None, *, overwrite: bool = False) -> PackageResult:
    """Write the bundle of ``run``'s ``config.target`` artifact; nothing is left half-written on error.

    ``config.output`` must be a new path, or an edgetl bundle of the same form (archive or folder), which is
    replaced only with ``overwrite``; the default path replaces the bundle an earlier package wrote there.
    Never inside the run's dataset (see :mod:`edgetl._outputs`)."""
    from ._outputs import BUNDLE_ARCHIVE, BUNDLE_FOLDER, claim_output, run_data_roots

    config = config or PackageConfig()
    manifest = Manifest.load(run)
    stage_name = _stage(manifest, config)
    precision = stage_name.precision or ""
    files = _stage_files(manifest, stage_name, config.verify)
    engine_stage = StageKey.engine(config.target, precision)
    if manifest.completed(engine_stage):
        files.update(_stage_files(manifest, engine_stage, config.verify))
    name = f"bundle-{config.target}-{precision}"
    final = Path(config.output) if config.output else manifest.run_dir / (name if config.folder else f"{name}.tar.gz")
    claim_output(final, BUNDLE_FOLDER if config.folder else BUNDLE_ARCHIVE, overwrite=overwrite,
                 explicit=bool(config.output), data_roots=run_data_roots(manifest))
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as staging:
        root = Path(staging) / name
        meta = _assemble(manifest, stage_name, files, root)
        if config.folder:
            with staging_dir(final) as out:
                shutil.copytree(root, out, dirs_exist_ok=True)
        else:
            with atomic_path(final, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
                tar.add(root, arcname=name, filter=_plain_member)
    return PackageResult(final, meta)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive members without the packager's user and group."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _stage(manifest: Manifest, config: PackageConfig) -> StageKey:
    """The build to package (:func:`edgetl.run.builds.choose_build`): a build within its budget, the QAT build
    that met the budget its PTQ build missed, or a build that missed it when ``allow_budget_miss``."""
    key = choose_build(manifest, config.target, config.precision, built(manifest, target=config.target))
    record = manifest.record(key)
    qat = superseded_by(manifest, key) if record.status == Status.BUDGET_MISSED else None
    if qat is not None:
        log.info("%s missed its accuracy budget: packaging %s, which met it", key, qat)
        return StageKey.parse(qat)
    if record.status == Status.BUDGET_MISSED and not config.allow_budget_miss:
        raise AccuracyBudgetError(f"{key} missed its accuracy budget ({budget_miss(record.metrics)}): rebuild it "
                                  f"within the budget, or pass --allow-budget-miss to package it anyway")
    return key


def _stage_files(manifest: Manifest, stage_name: StageKey, verify: bool) -> dict[str, ArtifactRecord]:
    """``{run-relative path: record}`` of a stage's deployable files, each checked against its sha256."""
    records = manifest.record(stage_name).artifacts
    out = {}
    for rel, record in records.items():
        if Path(rel).name in LEFT_OUT or Path(rel).parts[0] == QAT_TRAINING_DIR:  # diagnostics, QAT's checkpoints
            continue
        verified_file(manifest, rel, verify=verify)
        out[rel] = record
    return out


def _assemble(manifest: Manifest, stage: StageKey, files: dict[str, ArtifactRecord], root: Path) -> dict[str, Any]:
    """The bundle folder at ``root``; returns its bundle.json."""
    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    for rel in files:
        shutil.copy2(manifest.run_dir / rel, model_dir / Path(rel).name)
    model_rel, record = _main_model(files)
    meta = _meta(manifest, stage, model_rel, record, files)
    add_metadata(model_dir, meta)
    (root / LABELS_FILE).write_text("".join(f"{label}\n" for label in manifest.classes), encoding="utf-8")
    if CPP_SAMPLES.is_dir():
        shutil.copytree(CPP_SAMPLES, root / "cpp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build"))
    (root / "README.md").write_text(_readme(meta), encoding="utf-8")
    meta["files"] = {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    meta["sizes"] = {rel: (root / rel).stat().st_size for rel in meta["files"]}  # checked before an archive unpacks
    write_json(root / BUNDLE_FILE, meta)
    return meta


def _main_model(files: dict[str, ArtifactRecord]) -> tuple[str, ArtifactRecord]:
    """The file the runtime loads: the compiled engine when there is one, else the artifact with a runtime."""
    engine = next((rel for rel, rec in files.items() if rec.runtime == "tensorrt"), None)
    chosen = engine or next((rel for rel, rec in files.items() if rec.runnable), None)
    if chosen is None:
        raise RunFolderError(f"no runnable model among {', '.join(files)}: re-run the export of this target")
    return chosen, files[chosen]


def _meta(manifest: Manifest, stage: StageKey, model_rel: str, record: ArtifactRecord,
          files: dict[str, ArtifactRecord]) -> dict[str, Any]:
    """bundle.json without ``files`` (added once every file is in place)."""
    target, precision = stage.target or "", stage.precision or ""
    from .preprocessing import PreprocessSpec

    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    io = _io_names(manifest.run_dir, model_rel, files, spec.input_size)
    bench = _last_bench(manifest, model_rel)
    runtime = record.runtime
    return {
        "schema": SCHEMA_VERSION, "task": "image-classification", "edgetl_version": __version__, "created": utc_now(),
        "target": target, "precision": precision, "runtime": runtime,
        "deploy_runtime": record.deploy_runtime or runtime,
        "model": {"file": f"model/{Path(model_rel).name}", "precision_ran": record.executed_precision or precision,
                  "format": record.format, "key": model_rel, "runner_options": record.runner_options or {},
                  "files": [f"model/{Path(rel).name}" for rel in files]},
        "input": {"name": io["input"], "shape": io["shape"], "dynamic_batch": io["dynamic_batch"], "layout": "NCHW",
                  "dtype": "float32", "channel_order": spec.channel_order},
        "preprocessing": {**spec.to_dict(), "steps": ["convert RGB", f"resize shorter side to {spec.resize_size} "
                          f"({spec.interpolation})", f"center crop {spec.input_size}", "divide by 255",
                          "subtract mean, divide by std (per channel)", "HWC -> CHW, add batch axis"]},
        "output": {"name": io["output"], "shape": [io["shape"][0], len(manifest.classes)], "semantics": "logits",
                   "scores": "softmax"},
        "labels": list(manifest.classes),
        "accuracy": bench[0], "latency": bench[1], "budget": _budget(manifest, stage),
        "source": {"run": str(manifest.run_dir), "model": manifest.model, "stage": str(stage),
                   "artifacts": {rel: rec.sha256 for rel, rec in files.items()}},
    }


def _budget(manifest: Manifest, key: StageKey) -> dict[str, Any]:
    """The build's accuracy against its budget, as its stage recorded them."""
    record = manifest.record(key)
    m = record.metrics
    return {"met": record.status != Status.BUDGET_MISSED, "max_drop": m.get("max_drop"), "source": m.get("budget_source"),
            "drop_points": m.get("drop_points"), "top1": m.get("top1"), "float_top1": m.get("float_top1"),
            "method": m.get("method"), "calibration": m.get("calibration")}


def _io_names(run_dir: Path, model_rel: str, files: dict[str, ArtifactRecord], size: int) -> dict[str, Any]:
    """Input and output tensor names and the input shape, read from the IR or the ONNX the model came from."""
    onnx_rel = next((rel for rel in files if rel.endswith(".onnx")), None)
    if model_rel.endswith(".xml"):
        from .backends.openvino import import_openvino

        model = import_openvino().Core().read_model(str(run_dir / model_rel))
        dims = [d.get_length() if d.is_static else -1 for d in model.inputs[0].get_partial_shape()]
        names = model.inputs[0].get_any_name(), model.outputs[0].get_any_name()
    elif onnx_rel is not None:
        import onnx

        graph = onnx.load(str(run_dir / onnx_rel), load_external_data=False).graph
        initializers = {init.name for init in graph.initializer}
        first = next(i for i in graph.input if i.name not in initializers)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim]
        names = first.name, graph.output[0].name
    else:
        dims, names = [-1, 3, size, size], ("input", "logits")
    return {"input": names[0], "output": names[1], "shape": [1 if d < 0 else d for d in dims] or [1, 3, size, size],
            "dynamic_batch": bool(dims and dims[0] < 0)}


def _last_bench(manifest: Manifest, model_rel: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Accuracy and latency of this artifact from the run's last bench, when it measured these very bytes."""
    bench, found = manifest.record(BENCH), manifest.producer(model_rel)
    if not bench or not found or bench.inputs.get(model_rel) != found[1].digest(found[2]):
        return None, None
    try:  # the report bench recorded, byte for byte: an edited or linked-in one never reaches bundle.json
        report_path, _ = verified_file(manifest, "bench/report.json")
    except RunFolderError:
        return None, None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    row = next((r for r in report.get("results", []) if r.get("key") == model_rel and r.get("status") == "ok"), None)
    if row is None:
        return None, None
    where = {"report": str(report_path), "measured": report.get("created"), "runtime": row.get("runtime"),
             "precision_executed": row.get("precision_executed"), "data": report.get("data")}
    accuracy = None
    if row.get("accuracy"):
        acc = row["accuracy"]
        vs = row.get("vs_reference") or {}
        accuracy = {**where, "top1": acc.get("top1"), "top5": acc.get("top5"), "samples": acc.get("samples"),
                    "per_class": acc.get("per_class"), "top1_drop_pts": vs.get("top1_drop_pts"),
                    "ci95_pts": vs.get("ci95_pts"), "reference": vs.get("reference")}
    device = {k: v for k, v in (report.get("device") or {}).items() if k != "executed_precisions"}
    latency = {**where, "device": device,
               "per_batch": [{k: s.get(k) for k in ("batch", "p50_ms", "p50_stable_ms", "p90_ms", "p99_ms", "mean_ms",
                                                      "throughput_ips", "runs")} for s in row.get("latency", [])]}
    return accuracy, latency or None


def _readme(meta: dict[str, Any]) -> str:
    """README.md for the app developer."""
    pre, inp, model = meta["preprocessing"], meta["input"], meta["model"]
    acc = meta["accuracy"]
    lat = meta["latency"]
    measured = ""
    if acc:
        measured += f"- top-1 {100 * acc['top1']:.2f}% on {acc['samples']} images ({acc['data']['source']})\n"
    if lat and lat["per_batch"]:
        first = lat["per_batch"][0]
        measured += (f"- batch {first['batch']} p50 {first['p50_ms']:.3f} ms under {lat['runtime']} on "
                     f"{lat['device'].get('cpu', {}).get('model', '?')} ({lat['measured']})\n")
    package = {"openvino": "openvino", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[meta["runtime"]]
    return f"""# {meta['target']} {meta['precision']} bundle ({meta['task']})

Made by edgetl {meta['edgetl_version']} on {meta['created']}. Classes ({len(meta['labels'])}): {', '.join(meta['labels'][:20])}.

## What is inside

- `bundle.json`: input `{inp['name']}` {inp['shape']} {inp['layout']} {inp['dtype']} {inp['channel_order']},
  output `{meta['output']['name']}` = logits (softmax gives scores), preprocessing, labels, measured numbers,
  and the sha256 of every file.
- `labels.txt`: one class name per line, in output index order.
- `model/`: `{model['file']}` (runs under {meta['runtime']}; executed precision {model['precision_ran']}) and
  its build record (`build.json`). The OpenVINO IR carries the same facts in `rt_info/model_info`,
  ONNX files in `metadata_props`; only that metadata was added to the run's files.
- `cpp/`: C++ samples (see each folder's README / CMakeLists.txt).

## Feeding the model (exactly as in training and `edgetl bench`)

1. decode to RGB; 2. resize the shorter side to {pre['resize_size']} ({pre['interpolation']});
3. center crop {pre['input_size']}x{pre['input_size']}; 4. divide by 255;
5. subtract mean {pre['mean']}, divide by std {pre['std']}; 6. HWC -> CHW, batch axis first.

## Python (no torch needed)

    pip install --no-deps edgetl && pip install numpy pillow {package}
    python -m edgetl.runtime predict . image.jpg --top-k 3
    python -m edgetl.runtime bench . --data LABELLED_FOLDER -o report.json

    from edgetl.runtime import load
    model = load("path/to/this/bundle")        # checks every sha256 first
    print(model.predict("image.jpg", top_k=3))

## Measured when packaged

{measured or '- no bench of this artifact yet (run `edgetl bench RUN` before packaging)'}
"""


# -- metadata where the ecosystem looks ---------------------------------------------------------------
def model_info(meta: dict[str, Any]) -> dict[str, str]:
    """OpenVINO Model API's ``model_info`` for a classifier: mean and scale in 0..255 pixel units
    (Model API subtracts ``mean_values`` from 0..255 pixels and divides by ``scale_values``), and
    ``reverse_input_channels`` True because Model API feeds BGR (OpenCV) images and this model wants RGB."""
    pre = meta["preprocessing"]
    return {"model_type": "Classification", "labels": " ".join(label.replace(" ", "_") for label in meta["labels"]),
            "mean_values": " ".join(f"{255 * m:g}" for m in pre["mean"]),
            "scale_values": " ".join(f"{255 * s:g}" for s in pre["std"]),
            "reverse_input_channels": str(pre["channel_order"] == "RGB"), "resize_type": "crop", "pad_value": "0",
            "layout": "NCHW", "output_raw_scores": "True", "topk": "1", "multilabel": "False",
            "crop_pct": f"{pre['crop_pct']:g}", "resize_size": str(pre["resize_size"]),
            "interpolation": pre["interpolation"], "edgetl_bundle_schema": str(meta["schema"])}


def add_metadata(model_dir: Path, meta: dict[str, Any]) -> None:
    """``rt_info/model_info`` into each IR's xml (the .bin untouched), ``metadata_props`` into each ONNX."""
    info = model_info(meta)
    for xml in model_dir.glob("*.xml"):
        xml.write_text(_with_model_info(xml.read_text(encoding="utf-8"), info), encoding="utf-8")
    for path in model_dir.glob("*.onnx"):
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {**{f"model_info {k}": v for k, v in info.items()},
                 "edgetl.labels": json.dumps(meta["labels"]), "edgetl.preprocessing": json.dumps(meta["preprocessing"])}
        kept = [p for p in model.metadata_props if p.key not in props]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **props})
        onnx.save(model, str(path))


def _with_model_info(xml: str, info: dict[str, str]) -> str:
    """The IR text with a ``<model_info>`` block at the end of its ``<rt_info>`` (added when absent); the
    rest of the file is left byte for byte as it was."""
    from xml.sax.saxutils import quoteattr

    if "<model_info>" in xml:
        raise RunFolderError("the IR already has a model_info section: edgetl does not overwrite one")
    body = "".join(f"\t\t\t<{key} value={quoteattr(value)} />\n" for key, value in info.items())
    block = f"\t\t<model_info>\n{body}\t\t</model_info>\n"
    end = xml.rfind("</rt_info>")
    if end < 0:
        net_end = xml.rfind("</net>")
        return xml[:net_end] + f"\t<rt_info>\n{block}\t</rt_info>\n" + xml[net_end:]
    line_start = xml.rfind("\n", 0, end) + 1
    return xml[:line_start] + block + xml[line_start:]
