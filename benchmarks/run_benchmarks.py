"""The project's own benchmark suite: every artifact of a run via ``edgetl.bench``, plus plain baselines.

    python benchmarks/run_benchmarks.py --run runs/lite0 [--batch 1,8] [--rounds 5]

Measures the run with :func:`edgetl.bench.benchmark` and, in the same process, two hand-written
baselines that use no edgetl code at all: plain PyTorch eager (``model(x)`` under
``torch.inference_mode``) and plain ONNX Runtime (a default ``InferenceSession``). Half the baseline
rounds run before the edgetl benchmark and half after, and every figure is a lowest per-round
median, so slow drift on a shared machine hits both sides. Each artifact is reported as a ratio
to each baseline (>1 = faster than the baseline); the ratios are what to compare across machines.
A baseline ratio near 1 for edgetl's own PyTorch / ONNX Runtime rows shows the harness adds no
overhead. Results go to ``benchmarks/results/bench-<host>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np

from edgetl._io import write_json
from edgetl.bench import BenchConfig, benchmark, parse_batch_sizes
from edgetl.doctor import device_fingerprint

HERE = Path(__file__).resolve().parent


def plain_baselines(run: Path, images: np.ndarray, batches: tuple[int, ...], rounds: int, iterations: int
                    ) -> dict[str, dict[int, list[float]]]:
    """Per-round median latencies (ms) of plain torch and plain onnxruntime, per batch size."""
    import onnxruntime as ort
    import torch

    from edgetl.models import load_run_model

    model, _ = load_run_model(run)
    session = ort.InferenceSession(str(run / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def torch_call(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    calls = {"plain_torch": torch_call, "plain_onnxruntime": lambda x: session.run(None, {name: x})[0]}
    medians: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in calls}
    for batch in batches:
        x = np.ascontiguousarray(images[:batch])
        for call in calls.values():
            for _ in range(3):
                call(x)
        for r in range(rounds):
            for key in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                times = []
                for _ in range(iterations):
                    start = time.perf_counter_ns()
                    calls[key](x)
                    times.append((time.perf_counter_ns() - start) / 1e6)
                medians[key][batch].append(float(np.median(times)))
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder with checkpoint.pt and onnx/model.onnx")
    parser.add_argument("--batch", default="1,8", help="batch sweep (default 1,8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--output", type=Path, help="results JSON [default: benchmarks/results/bench-HOST-DATE.json]")
    args = parser.parse_args()
    batches = parse_batch_sizes(args.batch)

    from edgetl.data import load_array, run_eval_samples
    from edgetl.preprocessing import PreprocessSpec
    from edgetl.run import Manifest

    manifest = Manifest.load(args.run)
    images, _ = load_array(run_eval_samples(manifest), PreprocessSpec.from_dict(manifest.preprocessing),
                           limit=max(batches))  # only the largest latency batch is kept in memory
    half = max(1, args.rounds // 2)
    before = plain_baselines(args.run, images, batches, half, args.iterations)
    report = benchmark(args.run, BenchConfig(batch_sizes=batches, rounds=args.rounds, iterations=args.iterations))
    after = plain_baselines(args.run, images, batches, args.rounds - half or 1, args.iterations)
    plain = {key: {b: min(before[key][b] + after[key][b]) for b in batches} for key in before}

    rows = []
    for res in report.results:
        row = {"label": res["label"], "key": res["key"], "status": res["status"],
               "precision_executed": res["precision_executed"],
               "top1": (res.get("accuracy") or {}).get("top1"),
               "top1_drop_pts": (res.get("vs_reference") or {}).get("top1_drop_pts"), "batches": {}}
        for stat in res["latency"]:
            b, p50 = stat["batch"], stat["p50_stable_ms"]
            row["batches"][str(b)] = {"p50_ms": p50, "throughput_ips": stat["throughput_ips"],
                                      "speedup_vs_plain_torch": plain["plain_torch"][b] / p50,
                                      "speedup_vs_plain_onnxruntime": plain["plain_onnxruntime"][b] / p50}
        rows.append(row)
    fingerprint = device_fingerprint()
    result = {"suite": "edgetl benchmarks/run_benchmarks.py", "created": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "machine": fingerprint, "run": str(args.run), "model": manifest.model,
        "config": {"batches": list(batches), "rounds": args.rounds, "iterations": args.iterations},
        "plain_baselines_p50_ms": {k: {str(b): v for b, v in d.items()} for k, d in plain.items()},
        "results": rows, "edgetl_report": str(report.files.get("json"))}
    date = dt.date.today().isoformat()
    out = args.output or HERE / "results" / f"bench-{platform.node() or 'host'}-{date}.json"
    write_json(out, result)

    print("\nplain baselines (lowest round median, ms): " + ", ".join(
        f"{k} b{b} {v:.3f}" for k, d in plain.items() for b, v in d.items()))
    print(f"{'artifact':<34} {'batch':>5} {'p50 ms':>9} {'x plain torch':>14} {'x plain ORT':>12} {'top-1':>7}")
    for row in rows:
        for b, s in row["batches"].items():
            top1 = f"{100 * row['top1']:.2f}%" if row["top1"] is not None else "—"
            print(f"{row['label'][:34]:<34} {b:>5} {s['p50_ms']:>9.3f} {s['speedup_vs_plain_torch']:>13.2f}x "
                  f"{s['speedup_vs_plain_onnxruntime']:>11.2f}x {top1:>7}")
        if not row["batches"]:
            print(f"{row['label'][:34]:<34} {row['status']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
