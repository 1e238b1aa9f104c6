"""report.md: the run, data, device and method, the results table, notes and the comparison."""

from __future__ import annotations

from typing import Any

from .rows import COLUMNS, rows


def render_markdown(report: dict[str, Any]) -> str:
    """report.md (the plot is referenced as accuracy_latency.png next to it)."""
    dev = report["device"]
    cpu = dev["cpu"]
    lines = [f"# edgetl bench — {report['model'].get('name', '')}", "",
             f"- created: {report['created']}, edgetl {report['edgetl']}, schema {report['schema_version']}",
             f"- data: {report['data']['source']} ({report['data']['images']} images, input "
             f"{'x'.join(map(str, report['data']['input_shape']))})",
             f"- device: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores), {dev['os']}"
             + ("; GPUs: " + ", ".join(g["name"] for g in dev["gpus"]) if dev.get("gpus") else ""),
             f"- reference (float model): {report['reference'] or 'none'}",
             f"- method: {report['method']['latency']}", "",
             "p50 = lowest per-round median (ms per batch); drop = reference top-1 minus this top-1, in points, "
             "with a paired bootstrap 95% CI; `~` within noise (CI includes 0), `!` significant.", ""]
    header = [title.replace("|", "\\|") for _, title in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(report):
        lines.append("| " + " | ".join(row[k].replace("|", "\\|") for k, _ in COLUMNS) + " |")
    skipped = [r for r in report["results"] if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped or failed", ""] + [f"- `{r['key']}` {r['status']}: {r['reason']}" for r in skipped]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    comp = report.get("comparison")
    if comp:
        lines += ["", f"## Compared with {comp['old_created']}", "", "| artifact | batch | old ms | new ms | change |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['batch']} | {r['old_ms']:.3f} | {r['new_ms']:.3f} | {r['change_pct']:+.1f}%"
                  f"{' **regression**' if r['regression'] else ''} |" for r in comp["rows"]]
    lines += ["", "![accuracy vs latency](accuracy_latency.png)", ""]
    return "\n".join(lines)
