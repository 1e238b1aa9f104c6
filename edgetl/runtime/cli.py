"""``python -m edgetl.runtime predict|bench``: the runtime's own command line (argparse, no click), and
the image-list and table helpers ``edgetl predict`` shares with it."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import IMAGE_EXTENSIONS as IMAGE_SUFFIXES
from ..errors import DatasetError, EdgetlError


def expand_images(args: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes; glob patterns expanded (sorted)."""
    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            out.append(path)
        elif glob.has_magic(str(arg)):
            matched = sorted(Path(p) for p in glob.glob(str(arg), recursive=True))
            found = [p for p in matched if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise DatasetError(f"no images match {arg}")
            out += found
        else:
            raise DatasetError(f"image not found: {arg}")
    if not out:
        raise DatasetError(f"no images found in {', '.join(map(str, args))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def render_predictions(predictions: Sequence[Any]) -> str:
    """A plain-text table: image, top-1 label and score, then the rest of the top-k."""
    if not predictions:
        return ""
    width = min(max(len(p.source) for p in predictions), 80)
    lines = [f"{'image':<{width}}  {'top-1':<16} {'score':>7}  others"]
    for p in predictions:
        others = ", ".join(f"{label} {score:.3f}" for label, score in zip(p.labels[1:], p.scores[1:]))
        lines.append(f"{p.source:<{width}}  {p.label:<16} {p.score:7.4f}  {others}")
    return "\n".join(lines)


def predictions_json(predictions: Sequence[Any]) -> str:
    return json.dumps([p.to_dict() for p in predictions], indent=2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgetl.runtime",
                                     description="Run or benchmark an edgetl bundle without torch.")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="Top-k classes of images (files, folders, globs).")
    predict.add_argument("bundle")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--batch", type=int, default=1, help="Images per inference call.")
    predict.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    predict.add_argument("--threads", type=int, default=None)
    bench = sub.add_parser("bench", help="Latency (and accuracy with --data) as `edgetl bench` measures it.")
    bench.add_argument("bundle")
    bench.add_argument("--data", help="Labelled folder CLASS/*.jpg with the bundle's classes.")
    bench.add_argument("-o", "--output", default="report.json", help="report.json path [default: ./report.json].")
    bench.add_argument("--batch", default="1", help="Batch sweep, e.g. 1,8.")
    bench.add_argument("--rounds", type=int, default=None)
    bench.add_argument("--iterations", type=int, default=None)
    bench.add_argument("--warmup", type=int, default=None)
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument("--memory", action="store_true", help="Also measure peak memory (a subprocess).")
    return parser


def _predict(args: argparse.Namespace) -> None:
    from . import load

    options = {"threads": args.threads} if args.threads else {}
    with load(args.bundle, **options) as model:
        predictions = model.predict(expand_images(args.images), top_k=args.top_k, batch_size=args.batch)
    print(predictions_json(predictions) if args.json else render_predictions(predictions))


def _bench(args: argparse.Namespace) -> None:
    from ..bench.config import BenchConfig, parse_batch_sizes
    from .bench import bench_bundle
    from .bundle import open_bundle

    given = {k: getattr(args, k) for k in ("rounds", "iterations", "warmup", "threads") if getattr(args, k)}
    config = BenchConfig(batch_sizes=parse_batch_sizes(args.batch), memory=args.memory, **given)
    bundle = open_bundle(args.bundle)
    try:
        report = bench_bundle(bundle, config, data=args.data, output=args.output)
    finally:
        bundle.close()
    for res in report["results"]:
        if res["status"] != "ok":
            raise EdgetlError(f"{res['key']} {res['status']}: {res['reason']}")
        for stat in res["latency"]:
            print(f"{res['label']}  batch {stat['batch']}: p50 {stat['p50_ms']:.3f} ms, p50_stable "
                  f"{stat['p50_stable_ms']:.3f} ms, p90 {stat['p90_ms']:.3f} ms ({stat['runs']} runs)")
        if res["accuracy"]:
            print(f"{res['label']}  top-1 {100 * res['accuracy']['top1']:.2f}% on {report['data']['images']} images")
    print(f"report: {args.output}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; an edgetl error is one line on stderr and a non-zero exit."""
    args = _parser().parse_args(argv)
    try:
        (_predict if args.command == "predict" else _bench)(args)
    except EdgetlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
