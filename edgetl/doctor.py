"""What this machine can run: CPU features, GPUs, and the runtimes edgetl can use, with versions.

``device_fingerprint()`` is also stamped on every benchmark so numbers carry their machine.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

from .errors import EdgetlError, MissingBackendError

# flags in /proc/cpuinfo that change which kernels int8/bf16 models get
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")

# libraries that are not runtimes (those come from the runtime table): name -> (import name, edgetl extra)
LIBRARIES = {
    "nncf": ("nncf", "openvino"),
    "torch-pruning": ("torch_pruning", "prune"),
    "timm": ("timm", None),
    "onnxslim": ("onnxslim", None),
    "polygraphy": ("polygraphy", "tensorrt"),
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
    """Every runtime of the runtime table: ``{installed, version}``, or the pip command that installs it."""
    from .backends import RUNTIMES

    return {name: spec.status() for name, spec in RUNTIMES.items()}


def library_status() -> dict[str, dict[str, Any]]:
    """The other libraries edgetl's stages use (quantization, pruning, models), as :func:`runtime_versions`."""
    found = {}
    for name, (module, extra) in LIBRARIES.items():
        try:
            found[name] = {"installed": True, "version": metadata.version(name)}
        except metadata.PackageNotFoundError:
            found[name] = ({"installed": True, "version": "unknown"} if importlib.util.find_spec(module)
                           else {"installed": False, "install": MissingBackendError.install_hint(name, extra)})
    return found


def openvino_devices() -> list[str]:
    """What OpenVINO can run on here (a target's ``device`` must be one of these); [] without OpenVINO."""
    from .backends import RUNTIMES

    try:
        ov = RUNTIMES["openvino"].import_library()
    except EdgetlError:
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
    report["libraries"] = library_status()
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
        lines.append(_status_line(name, state))
    lines.append("libraries:")
    lines += [_status_line(name, state) for name, state in report.get("libraries", {}).items()]
    return "\n".join(lines)


def _status_line(name: str, state: dict[str, Any]) -> str:
    if not state["installed"]:
        return f"  {name:<14} missing  -> {state['install']}"
    if state.get("too_old"):
        return f"  {name:<14} {state['version']} is too old (edgetl needs >= {state['required']}) -> {state['install']}"
    return f"  {name:<14} {state['version']}"
