"""Peak memory of one artifact, measured in a fresh process (``python -m edgetl.bench.memory REQUEST``).

In one process the high-water mark would belong to whichever artifact peaked first, so each artifact
gets its own subprocess. This module is also that subprocess's entry: it imports only the runner
machinery, not the rest of the benchmark.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .discover import BenchTarget

MEMORY_METHOD = ("fresh subprocess per artifact: peak RSS (VmHWM) while loading and running 3 batches of the "
                 "largest size; delta = peak minus RSS after importing the runtime library")
PROBE_TIMEOUT_S = 600


def memory_probe(target: BenchTarget, input_shape: tuple[int, ...], runs: int = 3,
                 steady: bool = True) -> dict[str, Any]:
    """Peak RSS of a fresh process that imports the runtime, loads the artifact and runs it."""
    request = json.dumps({"runtime": target.runtime, "artifact": str(target.artifact), "options": target.options,
                          "shape": list(input_shape), "runs": runs, "steady_allocator": steady})
    try:
        proc = subprocess.run([sys.executable, "-m", "edgetl.bench.memory", request], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"method": MEMORY_METHOD, "error": f"memory probe timed out after {PROBE_TIMEOUT_S} s"}
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

    import numpy as np

    from .._allocator import steady_allocator
    from ..backends import RUNTIMES, create_runner

    request = json.loads(request_json)
    if request.get("steady_allocator", True):
        steady_allocator()
    try:
        importlib.import_module(RUNTIMES[request["runtime"]].module)
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


if __name__ == "__main__":
    _probe_main(sys.argv[1])
