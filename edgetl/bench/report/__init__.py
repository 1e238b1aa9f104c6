"""The report files of a benchmark: report.json, report.md, report.html and accuracy_latency.png, and the
terminal tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._io import write_json, write_text
from .html import render_html
from .markdown import render_markdown
from .plot import plot_accuracy_latency
from .rows import COLUMNS, SUMMARY_COLUMNS
from .table import render_comparison, render_table


def write_reports(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md, report.html (plot embedded) and accuracy_latency.png, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": write_json(out_dir / "report.json", report)}
    png = plot_accuracy_latency(report, out_dir / "accuracy_latency.png")
    if png:
        files["plot"] = png
    files["markdown"] = write_text(out_dir / "report.md", render_markdown(report))
    files["html"] = write_text(out_dir / "report.html", render_html(report, png.read_bytes() if png else None))
    return files


__all__ = ["COLUMNS", "SUMMARY_COLUMNS", "plot_accuracy_latency", "render_comparison", "render_html", "render_markdown",
           "render_table", "write_reports"]
