"""The report and a comparison as rich Tables (the CLI prints them)."""

from __future__ import annotations

from typing import Any

from .rows import COLUMNS, fmt, rows


def render_table(report: dict[str, Any], columns: list[tuple[str, str]] | None = None):
    """The report as a rich Table (the CLI prints it); ``SUMMARY_COLUMNS`` (one batch size) fits 80 columns."""
    columns = columns or COLUMNS
    from rich.table import Table
    from rich.text import Text

    cpu = report["device"]["cpu"]
    table = Table(title=f"edgetl bench — {report['data']['images']} images, {cpu.get('model')}, "
                        f"{cpu.get('usable_cores')} cores", title_justify="left")
    for key, title in columns:
        table.add_column(title, justify="left" if key in ("artifact", "ran", "drop") else "right",
                         no_wrap=key != "artifact", min_width=16 if key == "artifact" else None)
    for row in rows(report):
        style = "dim" if row["p50"] in ("skipped", "failed") else None
        table.add_row(*(Text(row[k]) for k, _ in columns), style=style)
    return table


def render_comparison(comparison: dict[str, Any]):
    """``--compare`` as a rich Table: old and new p50 per artifact and batch, regressions red, speed-ups green."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"vs {comparison.get('old_created')} (p50_stable_ms; + is slower)", title_justify="left")
    for title in ("artifact", "batch", "old ms", "new ms", "change", "top-1 Δ pts"):
        table.add_column(title, justify="left" if title == "artifact" else "right")
    for row in comparison["rows"]:
        colour = "red" if row["regression"] else ("green" if row["change_pct"] < 0 else None)
        change = f"[{colour}]{row['change_pct']:+.1f}%[/{colour}]" if colour else f"{row['change_pct']:+.1f}%"
        table.add_row(Text(row["label"]), str(row["batch"]), f"{row['old_ms']:.3f}", f"{row['new_ms']:.3f}", change,
                      fmt(row.get("top1_change_pts"), "+.2f"))
    return table
