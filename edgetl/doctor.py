"""What this machine can run: CPU features, GPUs, and the runtimes edgetl can use, with versions.

``device_fingerprint()`` is also stamped on every benchmark so numbers carry their machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

# flags in /proc/cpuinfo that change which kernels int8/bf16 models get
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")

RUNTIMES = {
    "torch": ("torch", None),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "torch-pruning": ("torch-pruning", "prune"),
    "timm": ("timm", None),
    "onnxslim": ("onnxslim", None),
}


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"arch": platform.machine(), "logical_cores": os.cpu_count(),
                            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["isa"] = {flag: flag in flags for flag in ISA_FLAGS}
            break
    info.setdefault("model", platform.processor() or "unknown")
    return info


def gpu_info() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (empty when there is none)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    keys = ("name", "compute_capability", "driver", "memory")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.strip().splitlines() if line]


def runtime_versions() -> dict[str, dict[str, Any]]:
    found = {}
    for name, (dist, extra) in RUNTIMES.items():
        try:
            found[name] = {"installed": True, "version": metadata.version(dist)}
        except metadata.PackageNotFoundError:
            found[name] = {"installed": False, "install": f"pip install 'edgetl[{extra}]'" if extra else f"pip install {dist}"}
    return found


def openvino_devices() -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().available_devices)


def device_fingerprint() -> dict[str, Any]:
    """The machine in one record: OS, CPU and its ISA flags, GPUs, library versions."""
    from .manifest import library_versions

    return {"os": f"{platform.system()} {platform.release()}", "hostname": platform.node(), "cpu": cpu_info(),
            "gpus": gpu_info(), "versions": library_versions()}


def environment_report() -> dict[str, Any]:
    report = device_fingerprint()
    report["runtimes"] = runtime_versions()
    report["openvino_devices"] = openvino_devices()
    return report


def render_report(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    lines = [f"OS        {report['os']}",
             f"CPU       {cpu['model']} ({cpu['arch']}, {cpu['usable_cores']} usable cores)",
             "ISA       " + " ".join(f"{k}{'+' if v else '-'}" for k, v in cpu.get("isa", {}).items()),
             "GPUs      " + (", ".join(f"{g['name']} (sm {g['compute_capability']}, driver {g['driver']})"
                                       for g in report["gpus"]) or "none"),
             "OpenVINO  devices: " + (", ".join(report["openvino_devices"]) or "n/a"), "", "runtimes:"]
    for name, state in report["runtimes"].items():
        lines.append(f"  {name:<14} {state['version'] if state['installed'] else 'missing  -> ' + state['install']}")
    return "\n".join(lines)
