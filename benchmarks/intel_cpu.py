"""Intel CPU target on a fine-tuned run: true-FP32, FP32 (default hint), FP16 and INT8 OpenVINO IR.

Builds the three IRs with ``edgetl.build.build_target`` (top-1 checked against the PyTorch float
model on the run's val split), then times batch-1 latency with the runners interleaved: every
round runs each variant in turn (order rotated), so background load hits them alike, and the
speed-up ratios are taken within each round.

    python benchmarks/intel_cpu.py RUN [--rounds 7 --iterations 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path


from edgetl._io import write_json
from edgetl.backends.openvino import OpenVINORunner
from edgetl.build import TargetBuildConfig, build_target, checkpoint_top1, runner_top1
from edgetl.data import EvalImages, run_eval_samples
from edgetl.run import Manifest, library_versions
from edgetl.preprocessing import PreprocessSpec

# variant -> (IR precision, runner options)
VARIANTS = {
    "fp32-true": ("fp32", {"precision_hint": "f32"}),
    "fp32-default-hint": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8": ("int8", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=60, help="timed batch-1 runs per variant per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--skip-build", action="store_true", help="reuse RUN/intel-cpu/* already built")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "intel_cpu.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    builds = {}
    if not args.skip_build:
        for precision in ("fp32", "fp16", "int8"):
            result = build_target(args.run, TargetBuildConfig(precision=precision, calib_size=args.calib_size,
                                                              latency_runs=0))
            builds[precision] = result.metrics
    manifest = Manifest.load(args.run)
    spec = PreprocessSpec.from_dict(manifest.data["preprocessing"])
    images = EvalImages(run_eval_samples(manifest), spec)
    labels = images.labels
    reference_top1 = checkpoint_top1(Path(args.run), images, labels)

    runners = {name: OpenVINORunner(Path(args.run) / "intel-cpu" / ir / "model.xml", performance_hint="LATENCY",
                                    **options).load() for name, (ir, options) in VARIANTS.items()}
    rows = {}
    for name, runner in runners.items():
        top1 = runner_top1(runner, images, labels)
        info = runner.describe()
        rows[name] = {"top1": top1, "drop_points": round(100 * (reference_top1 - top1), 3),
                      "executed_precision": info.precision,
                      "inference_precision_hint": info.extra["inference_precision_hint"],
                      "compute_layers": info.extra["compute_layers"], "threads": info.threads, "round_p50_ms": []}

    batch = images[:1]
    names = list(runners)
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            runner = runners[name]
            for _ in range(args.warmup):
                runner.infer(batch)
            times = []
            for _ in range(args.iterations):
                start = time.perf_counter()
                runner.infer(batch)
                times.append(1000 * (time.perf_counter() - start))
            rows[name]["round_p50_ms"].append(round(statistics.median(times), 4))
    ref = rows["fp32-true"]["round_p50_ms"]
    for row in rows.values():
        row["p50_ms_median_of_rounds"] = round(statistics.median(row["round_p50_ms"]), 3)
        row["p50_ms_best_round"] = round(min(row["round_p50_ms"]), 3)
        ratios = [r / x for r, x in zip(ref, row["round_p50_ms"])]
        row["speedup_vs_true_fp32"] = round(statistics.median(ratios), 3)
        row["speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]

    result = {
        "run": str(args.run), "model": manifest.model.get("name"), "val_images": int(len(labels)),
        "input_size": spec.input_size, "pytorch_float_top1": reference_top1, "variants": rows, "builds": builds,
        "timing": {"batch": 1, "rounds": args.rounds, "iterations": args.iterations, "warmup": args.warmup,
                   "interleaved": True, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": library_versions(),
    }
    write_json(args.output, result)
    print(f"{manifest.model.get('name')} on {len(labels)} val images; PyTorch float top-1 {100 * reference_top1:.2f}%")
    print(f"{'variant':<19}{'runs in':<10}{'top-1':>8}{'drop':>8}{'p50 ms':>9}{'x true FP32':>13}")
    for name, row in rows.items():
        print(f"{name:<19}{row['executed_precision']:<10}{100 * row['top1']:>7.2f}%{row['drop_points']:>8.2f}"
              f"{row['p50_ms_median_of_rounds']:>9.3f}{row['speedup_vs_true_fp32']:>12.2f}x")
    print(f"wrote {args.output}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
