"""The TensorRT target family without TensorRT: profiles and their hardware facts, option checks that fail
before any work, RUN defaulting to the latest run, and (with the learned Lite0 run) the jetson build itself:
the Q/DQ ONNX, its FP16 twin, build.json's engine settings and trtexec lines, the manifest record and bench."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.build import TargetBuildConfig, build_target
from edgetl.cli import cli
from edgetl.errors import ConfigError, RunFolderError, TargetError
from edgetl.profiles import all_targets, load_target
from edgetl.run import latest_run
from edgetl.toolchains import get_toolchain
from edgetl.toolchains.trt_settings import EngineSettings, Hardware

TRT_TARGETS = ("jetson", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "nvidia-gpu")


def invoke(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# -- profiles ------------------------------------------------------------------------------------
def test_targets_lists_every_profile_on_one_line():
    code, out = invoke("targets")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == len(all_targets())
    for name in (*TRT_TARGETS, "intel-cpu"):
        assert sum(line.split()[0] == name for line in lines) == 1
    assert all(len(line.split()) > 3 for line in lines)  # name, toolchain, precisions, a description


@pytest.mark.parametrize("name, cores", [("jetson", 0), ("jetson-orin-nano", 0), ("jetson-orin-nx", 2),
                                         ("jetson-agx-orin", 2), ("nvidia-gpu", 0)])
def test_tensorrt_profiles_carry_the_module_facts(name, cores):
    profile = load_target(name)
    hardware = Hardware.from_dict(profile.hardware)
    assert profile.toolchain == "tensorrt" and profile.default_precision == "int8"
    assert hardware.max_dla_cores == cores
    if name.startswith("jetson"):
        assert hardware.platform == "jetson" and hardware.compute_capability == "8.7"
        assert "10" in hardware.tensorrt and hardware.tensorrt["10"].startswith("10.3")
    EngineSettings.from_dict(profile.engine)  # the engine block is valid


def test_orin_nx_dla_cores_depend_on_memory():
    assert Hardware.from_dict(load_target("jetson-orin-nx").hardware).dla_cores == {"8GB": 1, "16GB": 2}


def _check(target: str, precision: str = "int8", **options):
    from edgetl.build import check_build_config

    check_build_config(TargetBuildConfig(target=target, precision=precision, **options))


def test_dla_requests_are_checked_against_the_module():
    with pytest.raises(TargetError, match="jetson-orin-nano has no DLA"):
        _check("jetson-orin-nano", dla_core=0)
    with pytest.raises(TargetError, match="jetson has no DLA"):
        _check("jetson", dla_core=0)
    with pytest.raises(TargetError, match="DLA cores 0..1"):
        _check("jetson-agx-orin", dla_core=2)
    _check("jetson-agx-orin", dla_core=1)
    _check("jetson-orin-nx", dla_core=1)


def test_options_other_toolchains_cannot_honour():
    with pytest.raises(ConfigError, match="--calibration, --dla-core apply only to TensorRT targets"):
        _check("intel-cpu", dla_core=0, calibration="entropy")
    with pytest.raises(TargetError, match="no hardware-compatible engines on Jetson"):
        _check("jetson", hardware_compatibility="ampere+")
    _check("nvidia-gpu", hardware_compatibility="ampere+", version_compatible=True)
    with pytest.raises(ConfigError, match="int8 only"):
        _check("nvidia-gpu", "fp16", calibration="entropy")
    with pytest.raises(ConfigError, match="max_batch"):
        _check("nvidia-gpu", max_batch=0)


def test_engine_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="unknown.*max_batch"):
        EngineSettings.from_dict({"max_batchs": 4})
    with pytest.raises(ConfigError, match="hardware_compatibility"):
        EngineSettings(hardware_compatibility="turing+")
    with pytest.raises(ConfigError, match="optimization_level"):
        EngineSettings(optimization_level=6)


def test_cli_dla_on_orin_nano_fails_before_any_work(learned_base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(learned_base, run)
    before = sorted(p.name for p in run.iterdir())
    code, out = invoke("export", run, "--target", "jetson-orin-nano", "--dla-core", "0")
    assert code != 0 and "error: target jetson-orin-nano has no DLA" in out
    assert sorted(p.name for p in run.iterdir()) == before  # nothing half-written


# -- RUN defaults to the latest run under ./runs ---------------------------------------------------
def test_latest_run_is_the_most_recently_modified(tmp_path, learned_base):
    with pytest.raises(RunFolderError, match="no run folder under .*runs: fine-tune"):
        latest_run(tmp_path / "runs")
    older, newer = tmp_path / "runs" / "b-older", tmp_path / "runs" / "a-newer"
    for run, stamp in ((older, 1_000_000), (newer, 2_000_000)):
        shutil.copytree(learned_base, run)
        os.utime(run / "edgetl.json", (stamp, stamp))
    (tmp_path / "runs" / "notes").mkdir()  # not a run
    assert latest_run(tmp_path / "runs") == newer
    now = time.time()
    os.utime(older / "edgetl.json", (now, now))
    assert latest_run(tmp_path / "runs") == older


def test_export_without_run_says_which_run_it_took(tmp_path, learned_base):
    code, out = invoke("export", "--target", "jetson", cwd=tmp_path)
    assert code != 0 and "no run given and no run folder under ./runs" in out
    shutil.copytree(learned_base, tmp_path / "runs" / "probe")
    code, out = invoke("status", cwd=tmp_path)
    assert "using runs/probe, the most recent run under ./runs" in out


# -- the jetson build (learned Lite0 at 32 px) ------------------------------------------------------------
@pytest.fixture(scope="module")
def jetson_run(learned_base, tmp_path_factory) -> Path:
    """A copy of the learned run with jetson int8 and fp16 builds and an agx-orin DLA build."""
    run = tmp_path_factory.mktemp("jetson") / "run"
    shutil.copytree(learned_base, run)
    build_target(run, TargetBuildConfig(target="jetson", precision="int8", latency_runs=5))
    build_target(run, TargetBuildConfig(target="jetson", precision="fp16", latency_runs=5))
    build_target(run, TargetBuildConfig(target="jetson-agx-orin", precision="int8", dla_core=1, latency_runs=0,
                                        calibration="entropy"))
    return run


def _manifest(run: Path) -> dict:
    return json.loads((run / "edgetl.json").read_text())


def test_int8_writes_both_qdq_onnx_and_records_them(jetson_run):
    import onnx

    from edgetl.compress.quantize.ort_qdq import check_qdq_rules

    folder = jetson_run / "jetson" / "int8"
    stage = _manifest(jetson_run)["stages"]["jetson:int8"]
    assert stage["status"] == "complete"
    qdq, twin = stage["artifacts"]["jetson/int8/model.qdq.onnx"], stage["artifacts"]["jetson/int8/model.qdq.fp16.onnx"]
    assert qdq["runtime"] == "onnxruntime" and qdq["deploy_runtime"] == "tensorrt" and qdq["precision"] == "int8"
    assert "runtime" not in twin  # not benchmarked here: the strongly typed file is for TensorRT >= 10.12
    for name in ("model.qdq.onnx", "model.qdq.fp16.onnx"):
        model = onnx.load(str(folder / name))
        onnx.checker.check_model(model, full_check=True)
        assert check_qdq_rules(model) == []
        assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) > 40
    fp16 = onnx.load(str(folder / "model.qdq.fp16.onnx"))
    assert {i.type.tensor_type.elem_type for i in fp16.graph.input} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    metrics = stage["metrics"]
    twin_check = metrics["fp16_twin"]
    assert twin_check["runs_under_onnxruntime"] and twin_check["images"] == 9
    # FP16 scales move near-tied logits of this 32 px model: only a flip wider than twice the logit difference
    # (the ONNX parity's tie rule) is an error of the twin
    assert twin_check["decisive_flips_vs_fp32_qdq"] == 0 and twin_check["max_abs_logit_diff_vs_fp32_qdq"] < 0.1
    assert abs(metrics["drop_points"]) <= 100 * 2 / metrics["val_images"]  # at most two val images
    assert (folder / "sensitivity.json").is_file() and metrics["worst_layers"]


def _saturating_qdq():
    """input -> Q/DQ -> 1x1 Conv (per-channel INT8 weights, float bias) -> Q/DQ: every product of output
    channel 0 is +127 x 127, so any sum of two of them overflows int16; and that input, quantized."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_q = rng.choice(np.array([-127, 127], np.int8), size=(8, 64, 1, 1))
    x_q = (np.sign(w_q[0, :, 0, 0]).astype(np.int8) * 127)[None, :, None, None].repeat(4, 2).repeat(4, 3)
    scales = {"xs": np.float32(0.02), "ws": np.full(8, 0.01, np.float32), "ys": np.float32(2.0)}
    init = [numpy_helper.from_array(w_q * scales["ws"][:, None, None, None], "w"),
            numpy_helper.from_array(np.full(8, 0.5, np.float32), "b"),
            *(numpy_helper.from_array(v, k) for k, v in scales.items()),
            numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    q = lambda a, scale, zero, out, **kw: [helper.make_node("QuantizeLinear", [a, scale, zero], [f"{out}_q"], **kw),
                                           helper.make_node("DequantizeLinear", [f"{out}_q", scale, zero], [out], **kw)]
    nodes = [*q("input", "xs", "z", "x"), *q("w", "ws", "wz", "wd", axis=0),
             helper.make_node("Conv", ["x", "wd", "b"], ["c"]), *q("c", "ys", "z", "logits")]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, 4, 4])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), x_q, w_q, scales


def test_qdq_onnx_is_measured_as_tensorrt_computes_it_on_any_cpu():
    """A TensorRT int8 build measures its Q/DQ ONNX under ONNX Runtime with the options it records (bench
    and bundles reuse them); TensorRT sums INT8 products in int32, so must they: with ONNX Runtime's defaults
    the fused INT8 Conv saturates on x86 CPUs without VNNI (off by 70 of 206 here, 72% top-1 agreement for
    the learned Lite0), and a build's figures would depend on the CPU it ran on."""
    import numpy as np

    model, x_q, w_q, s = _saturating_qdq()
    acc = np.einsum("nchw,kc->nkhw", x_q.astype(np.int64), w_q[:, :, 0, 0].astype(np.int64))  # exact, int32-like
    y = acc * (s["xs"].astype(np.float64) * s["ws"][None, :, None, None]) + 0.5
    expected = np.clip(np.round(y / s["ys"]), -128, 127) * s["ys"]
    toolchain, profile = get_toolchain("tensorrt"), load_target("jetson")
    runner = toolchain.runner(model, "cpu", toolchain.runner_options(profile, "int8"))
    try:
        out = runner.infer(x_q.astype(np.float32) * s["xs"])
    finally:
        runner.close()
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_build_json_has_engine_settings_and_both_trtexec_lines(jetson_run):
    folder = jetson_run / "jetson" / "int8"
    trt = json.loads((folder / "build.json").read_text())["tensorrt"]
    assert trt["onnx"] == {"precision-flags": "model.qdq.onnx", "strongly-typed": "model.qdq.fp16.onnx"}
    assert trt["sha256"] == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                             for n in ("model.qdq.onnx", "model.qdq.fp16.onnx")}
    assert trt["input"] == {"name": "input", "shape": [3, 32, 32]} and trt["engine"]["max_batch"] == 8
    old, new = trt["trtexec"]["tensorrt-10.3"].split(), trt["trtexec"]["tensorrt-11"].split()
    assert old[0] == new[0] == "trtexec"
    assert "--onnx=model.qdq.onnx" in old and {"--int8", "--fp16"} <= set(old) and "--stronglyTyped" not in old
    assert "--onnx=model.qdq.fp16.onnx" in new and "--stronglyTyped" in new and not {"--int8", "--fp16"} & set(new)
    for line in (old, new):
        assert {"--minShapes=input:1x3x32x32", "--optShapes=input:1x3x32x32", "--maxShapes=input:8x3x32x32",
                "--timingCacheFile=timing.cache", "--memPoolSize=workspace:1024M", "--saveEngine=model.engine",
                "--exportLayerInfo=layers.json", "--profilingVerbosity=detailed"} <= set(line)
        assert not any(flag.startswith("--useDLACore") for flag in line)


def test_dla_build_on_agx_orin_names_the_core_with_gpu_fallback(jetson_run):
    trt = json.loads((jetson_run / "jetson-agx-orin" / "int8" / "build.json").read_text())["tensorrt"]
    assert trt["engine"]["dla_core"] == 1
    for line in trt["trtexec"].values():
        assert "--useDLACore=1" in line.split() and "--allowGPUFallback" in line.split()
    assert any("DLA" in note for note in trt["trtexec_notes"])  # TensorRT 11 on Jetson: no DLA before 11.4.1
    config = json.loads((jetson_run / "jetson-agx-orin" / "int8" / "build.json").read_text())["config"]
    assert config["calibration"] == "entropy"


def test_fp16_onnx_checked_against_float(jetson_run):
    import onnx

    stage = _manifest(jetson_run)["stages"]["jetson:fp16"]
    model = onnx.load(str(jetson_run / "jetson" / "fp16" / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    check = stage["metrics"]["fp16_check"]
    assert check["runs_under_onnxruntime"] and check["top1_agreement_vs_float"] >= 0.9
    assert check["max_abs_logit_diff_vs_float"] < 0.05
    trt = json.loads((jetson_run / "jetson" / "fp16" / "build.json").read_text())["tensorrt"]
    assert "--fp16" in trt["trtexec"]["tensorrt-10.3"].split() and "--onnx=model.fp16.onnx" in trt["trtexec"]["tensorrt-11"]


def test_bench_lists_the_qdq_onnx_beside_the_other_artifacts(jetson_run, tmp_path):
    from edgetl.bench import BenchConfig, benchmark

    config = BenchConfig(batch_sizes=(1,), warmup=2, iterations=5, rounds=1, min_iterations=2,
                         output=str(tmp_path / "b"))
    report = benchmark(jetson_run, config, progress=False)
    rows = {r["key"]: r for r in report.data["results"]}
    assert {"onnx/model.onnx", "jetson/int8/model.qdq.onnx", "jetson/fp16/model.fp16.onnx"} <= set(rows)
    qdq = rows["jetson/int8/model.qdq.onnx"]
    assert qdq["status"] == "ok" and qdq["runtime"] == "onnxruntime" and qdq["precision_artifact"] == "int8"
    n = qdq["accuracy"]["samples"]
    assert abs(qdq["accuracy"]["top1"] - rows["onnx/model.onnx"]["accuracy"]["top1"]) <= 2 / n
    assert "jetson/int8/model.qdq.fp16.onnx" not in rows


def test_2_4_sparse_weights_are_detected_for_the_sparse_builder_setting():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.toolchains.tensorrt import sparse_2_4_weights

    def model(weight):
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(weight, "w")])
        return helper.make_model(graph)

    dense = np.random.default_rng(0).normal(size=(8, 8, 3, 3)).astype(np.float32)
    groups = np.moveaxis(dense, 1, -1).reshape(-1, 4).copy()
    np.put_along_axis(groups, np.argsort(np.abs(groups), 1)[:, :2], 0, 1)  # 2 zeros in every 4 input channels
    sparse = np.ascontiguousarray(np.moveaxis(groups.reshape(8, 3, 3, 8), -1, 1))
    assert sparse_2_4_weights(model(dense)) == {"layers": 1, "sparse_layers": 0, "sparse": False}
    assert sparse_2_4_weights(model(sparse)) == {"layers": 1, "sparse_layers": 1, "sparse": True}
    wrong_axis = np.ascontiguousarray(np.swapaxes(sparse, 0, 1))  # zeros along the output channels instead
    assert not sparse_2_4_weights(model(wrong_axis))["sparse"]
