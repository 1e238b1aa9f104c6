"""The OpenVINO toolchain: float ONNX -> OpenVINO IR (fp32, fp16 weights, NNCF int8) for Intel targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import write_json
from .base import SavedArtifact, Toolchain


class OpenVINOToolchain(Toolchain):
    name = "openvino"
    runtime = "openvino"
    quantizer = "nncf-openvino"
    title = "OpenVINO"

    def check(self, precision: str) -> None:
        from ..backends.openvino import import_openvino

        import_openvino()
        if precision == "int8":
            from ..compress.quantize import get_backend

            get_backend(self.quantizer).check()

    def runner_options(self, profile: Any, precision: str) -> dict[str, Any]:
        # a true FP32 artifact needs the f32 hint on BF16 CPUs, or OpenVINO runs it in bf16
        return {**profile.runner_options, **({"precision_hint": "f32"} if precision == "fp32" else {})}

    def convert(self, onnx_path: Path) -> Any:
        from ..backends.openvino import convert_onnx

        return convert_onnx(onnx_path)

    def runner(self, model_or_path: Any, device: str, options: dict[str, Any]) -> Any:
        from ..backends.openvino import OpenVINORunner

        if isinstance(model_or_path, (str, Path)):
            return OpenVINORunner(model_or_path, device=device, **options).load()
        return OpenVINORunner.from_model(model_or_path, device=device, **options)

    def save(self, model: Any, folder: Path, precision: str) -> list[SavedArtifact]:
        from ..backends.openvino import save_ir

        save_ir(model, folder / "model.xml", compress_to_fp16=precision == "fp16")
        return [SavedArtifact("model.xml", {"format": "openvino-ir"}),
                SavedArtifact("model.bin", {"format": "openvino-weights"})]

    def describe(self, runner: Any) -> dict[str, Any]:
        info = runner.describe()
        return {"executed_precision": info.precision, "threads": info.threads,
                "inference_precision_hint": info.extra["inference_precision_hint"],
                "compute_layers": info.extra["compute_layers"]}

    def layer_precisions(self, runner: Any) -> dict[str, str] | None:
        return runner.layer_precisions()

    def reports(self, folder: Path, float_model: Any, model: Any, runner: Any, images: Any,
                extra: dict[str, Any], precision: str, sensitivity_images: int) -> dict[str, Any]:
        from ..compress.quantize import nncf_openvino as nq

        if precision != "int8":
            return {}
        images = images[:sensitivity_images]
        report = nq.sensitivity_report(float_model, model, images, runner.layer_precisions(original_names=True))
        report["float_compute_layers"] = nq.float_compute_layers(runner.layer_precisions())
        report.update(extra)
        write_json(folder / "sensitivity.json", report)
        return {"worst_layers": report["worst_layers"][:3]}
