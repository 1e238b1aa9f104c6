"""accuracy_latency.png: top-1 against latency, one numbered point per artifact (matplotlib, imported on use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._io import atomic_path
from ...backends import RUNTIMES


def plot_accuracy_latency(report: dict[str, Any], path: Path) -> Path | None:
    """Top-1 accuracy against batch-1 (smallest batch) p50 latency, one labelled point per artifact."""
    points = [r for r in report["results"] if r.get("accuracy") and r.get("latency")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {name: spec.colour for name, spec in RUNTIMES.items()}
    markers = {"fp32": "o", "bf16": "s", "fp16": "s", "int8": "D"}
    batch = min(s["batch"] for r in points for s in r["latency"])
    fig, ax = plt.subplots(figsize=(10, 6.4))
    placed: list[tuple[float, float, dict[str, Any]]] = []
    for res in points:
        stat = next((s for s in res["latency"] if s["batch"] == batch), None)
        if stat is None:
            continue
        placed.append((stat["p50_stable_ms"], 100 * res["accuracy"]["top1"], res))
    _scale_axes(ax, [p[0] for p in placed], [p[1] for p in placed])
    # numbered points + a legend below the axes: labels never collide, even where points coincide
    for number, (x, y, res) in enumerate(sorted(placed, key=lambda p: p[0]), start=1):
        base = (res.get("precision_executed") or "").split("+")[0]
        vs = res.get("vs_reference") or {}
        sub = "reference" if vs.get("is_reference") else (
            f"drop {vs['top1_drop_pts']:+.2f} pts" + (" (within noise)" if vs.get("within_noise") else "")
            if vs else "")
        ax.scatter([x], [y], s=110, color=colours.get(res["runtime"], "#555"), marker=markers.get(base, "o"),
                   edgecolor="white", linewidth=1.2, zorder=3, alpha=0.85,
                   label=f"{number}  {res['label']}: {x:.2f} ms, {100 * res['accuracy']['top1']:.2f}% · {sub}")
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(0, 9 + 9 * (number % 2)),
                    ha="center", fontsize=9, fontweight="bold", color="#222")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=1, fontsize=9, frameon=False)
    ref = next((r for _, _, r in placed if (r.get("vs_reference") or {}).get("is_reference")), None)
    if ref:
        ax.axhline(100 * ref["accuracy"]["top1"], color="#888", ls="--", lw=1, zorder=1)
    ax.set_xlabel(f"latency at batch {batch}: p50 ms (lowest round median) — lower is better")
    ax.set_ylabel("top-1 accuracy (%)")
    cpu = report["device"]["cpu"]
    ax.set_title(f"{report['model'].get('name', 'model')}: accuracy vs latency\n"
                 f"{report['data']['images']} val images · {cpu.get('model')} · {cpu.get('usable_cores')} cores"
                 " · dashed: float reference", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=150, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _scale_axes(ax: Any, xs: list[float], ys: list[float]) -> None:
    """Axis limits around the points; a log latency axis when latencies span more than 6x."""
    from matplotlib.ticker import FuncFormatter

    if xs and max(xs) / max(min(xs), 1e-9) > 6:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    pad = max(1.0, (max(ys) - min(ys)) * 0.6)
    ax.set_ylim(max(0, min(ys) - pad), min(100.5, max(ys) + pad))
    if ax.get_xscale() == "log":
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    else:
        ax.set_xlim(0, max(xs) * 1.2)
