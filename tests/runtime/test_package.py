"""edgetl package -> edgetl.runtime.load -> predict gives bench's answers, image by image (OpenVINO INT8)."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.openvino]


@pytest.fixture(scope="module")
def packaged_run(learned_base, tmp_path_factory):
    """learned_base built for intel-cpu INT8 and benched (short), then packaged."""
    from edgetl.bench import BenchConfig, benchmark
    from edgetl.build import TargetBuildConfig, build_target
    from edgetl.package import PackageConfig, package

    run = tmp_path_factory.mktemp("pkg") / "run"
    shutil.copytree(learned_base, run)
    build_target(run, TargetBuildConfig(target="intel-cpu", precision="int8", accuracy_control=False))
    benchmark(run, BenchConfig(rounds=1, iterations=3, warmup=1, memory=False, runtimes=("openvino",)),
              progress=False)
    return run, package(run, PackageConfig(target="intel-cpu"))


def test_bundle_layout_metadata_and_bench_numbers(packaged_run):
    run, result = packaged_run
    assert result.path == run / "bundle-intel-cpu-int8.tar.gz"
    with tarfile.open(result.path) as tar:
        names = set(tar.getnames())
    for name in ("bundle.json", "labels.txt", "README.md", "model/model.xml", "model/model.bin", "model/build.json"):
        assert f"bundle-intel-cpu-int8/{name}" in names
    meta = result.meta
    assert meta["runtime"] == "openvino" and meta["model"]["precision_ran"] == "int8"
    assert meta["labels"] == json.loads((run / "edgetl.json").read_text())["classes"]
    assert meta["accuracy"]["top1"] is not None and meta["latency"]["per_batch"][0]["p50_ms"] > 0
    assert meta["latency"]["device"]["cpu"]["model"]
    assert set(meta["files"]) >= {"labels.txt", "README.md", "model/model.xml", "model/model.bin"}


def test_predictions_equal_bench(packaged_run):
    from edgetl.backends import create_runner
    from edgetl.data import EvalImages, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec
    from edgetl.run import Manifest
    from edgetl.runtime import load

    run, result = packaged_run
    manifest = Manifest.load(run)
    samples = run_eval_samples(manifest)[:12]
    images = EvalImages(samples, PreprocessSpec.from_dict(manifest.preprocessing))
    with create_runner("openvino", run / "intel-cpu/int8/model.xml", performance_hint="LATENCY") as runner:
        bench_top1 = np.concatenate([runner.infer(b) for b, _ in images.batches(4)]).argmax(1)
    with load(result.path) as model:
        predictions = model.predict([path for path, _ in samples], top_k=1, batch_size=4)
    assert [p.indices[0] for p in predictions] == bench_top1.tolist()
    import openvino as ov

    with load(result.path) as model:
        xml = model.bundle.root / "model" / "model.xml"
        info = ov.Core().read_model(str(xml)).get_rt_info()
        assert info["model_info"]["model_type"].astype(str) == "Classification"
        assert info["model_info"]["labels"].astype(str) == " ".join(manifest.classes)


def test_cli_package_predict_and_errors(packaged_run, tmp_path):
    run, _ = packaged_run
    runner = CliRunner()
    out = runner.invoke(cli, ["package", str(run), "--target", "intel-cpu", "--dir", "-o", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    from edgetl.data import run_eval_samples
    from edgetl.run import Manifest

    image = run_eval_samples(Manifest.load(run))[0][0]
    shown = runner.invoke(cli, ["predict", str(tmp_path / "b"), str(image), "--json", "-k", "2"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)[0]["source"] == str(image)
    via_run = runner.invoke(cli, ["predict", str(run), str(image), "--target", "intel-cpu", "--json", "-k", "2"])
    assert json.loads(via_run.output)[0]["scores"] == pytest.approx(json.loads(shown.output)[0]["scores"])
    missing = runner.invoke(cli, ["package", str(run), "--target", "jetson"])
    assert missing.exit_code == 1 and "no jetson build" in missing.output and "Traceback" not in missing.output
    (run / "intel-cpu/int8/model.bin").write_bytes(b"tampered")
    refused = runner.invoke(cli, ["package", str(run), "--target", "intel-cpu", "-o", str(tmp_path / "x.tar.gz")])
    assert refused.exit_code == 1 and "model.bin" in refused.output and not (tmp_path / "x.tar.gz").exists()
    assert not list(tmp_path.glob(".x.tar.gz*"))
