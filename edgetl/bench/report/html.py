"""report.html: self-contained, with the accuracy-latency plot embedded as base64."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from .rows import COLUMNS, rows


def render_html(report: dict[str, Any], png: bytes | None) -> str:
    """report.html, with ``png`` (the plot) embedded."""
    esc = html.escape
    table_rows = rows(report)
    head = "".join(f"<th>{esc(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(r[k])}</td>" for k, _ in COLUMNS) + "</tr>" for r in table_rows)
    img = (f'<img alt="accuracy vs latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "<p>(no plot: no artifact has both latency and accuracy)</p>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.get("notes", []))
    cpu = report["device"]["cpu"]
    device = json.dumps(report["device"], indent=1)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgetl bench — {esc(str(report['model'].get('name', '')))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
th{{background:#f2f2f2}}img{{max-width:900px;width:100%}}pre{{background:#f7f7f7;padding:1em;font-size:12px}}</style>
</head><body>
<h1>edgetl bench — {esc(str(report['model'].get('name', '')))}</h1>
<p>{esc(report['data']['source'])}: {report['data']['images']} images · {esc(str(cpu.get('model')))},
{cpu.get('usable_cores')} usable cores · reference: {esc(str(report['reference']))} · {esc(report['created'])}</p>
{img}
<h2>Results</h2>
<p>p50 = lowest per-round median latency (ms per batch); drop = reference top-1 minus this top-1 in points with a
paired bootstrap 95% CI (~ within noise, ! significant).</p>
<table><tr>{head}</tr>{body}</table>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Method</h2><pre>{esc(json.dumps(report['method'], indent=1))}</pre>
<h2>Device</h2><pre>{esc(device)}</pre>
</body></html>
"""
