"""A study's outputs: the trial table (``trials.json``), ``best.yaml`` and ``report.html``.

``best.yaml`` holds every fine-tuning option of the best trial (minus its output folder), so
``edgetl finetune --config best.yaml DATA`` trains that trial again. The HTML report is self-contained
(inline SVG, no plotly): the optimisation history and, with two or more complete trials, Optuna's
parameter importances (Optuna's default evaluator).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from .config import TuneConfig, TuneResult
from .space import SearchSpace

log = logging.getLogger(__name__)

BEST_NAME, REPORT_NAME, TABLE_NAME = "best.yaml", "report.html", "trials.json"


TRIAL_COMPLETE = "complete"  # an Optuna trial state as trials.json spells it (TrialState.COMPLETE, lower case)

def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.user_attrs.get("duration_s")
        if duration is None and t.datetime_start and t.datetime_complete:
            duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        rows.append({"number": t.number, "state": t.state.name.lower(), "values": t.values,
                     "params": dict(t.params), "duration_s": duration, "run": t.user_attrs.get("run"),
                     "error": t.user_attrs.get("error"), "stale": bool(t.user_attrs.get("stale")),
                     "shared": t.user_attrs.get("shared") or []})
    return rows


def format_table(rows: list[dict[str, Any]], multi: bool = False) -> str:
    """The trials as a fixed-width text table."""
    head = f"{'trial':>5}  {'state':<8}  {'top-1':>7}  " + (f"{'ms':>8}  " if multi else "") + f"{'time':>7}  {'shared':<8}  params"
    lines = [head]
    for r in rows:
        values = r["values"] or []
        top1 = f"{100 * values[0]:6.2f}%" if values else f"{'-':>7}"
        ms = (f"{values[1]:8.2f}  " if len(values) > 1 else f"{'-':>8}  ") if multi else ""
        duration = f"{r['duration_s']:6.0f}s" if r["duration_s"] is not None else f"{'-':>7}"
        shared = "features" if "features" in r.get("shared", []) else "scan" if r.get("shared") else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        note = f"  [{r['error']}]" if r["error"] else ""
        lines.append(f"{r['number']:>5}  {r['state']:<8}  {top1}  {ms}{duration}  {shared:<8}  {params}{note}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_outputs(study: Any, config: TuneConfig, space: SearchSpace, url: str, warnings: list[str]
                  ) -> TuneResult:
    from .._io import write_json

    study_dir = config.study_dir.resolve()
    rows = trial_rows(study)
    write_json(study_dir / TABLE_NAME, {"study": study.study_name, "storage": url, "trials": rows})
    best = _best_row(study, rows, config)
    best_config = write_best(study_dir, config, space, best) if best else None
    report = write_report(study, study_dir / REPORT_NAME, rows, config)
    return TuneResult(study_dir, url, rows, best, best_config, report, warnings)


def _best_row(study: Any, rows: list[dict[str, Any]], config: TuneConfig) -> dict[str, Any] | None:
    complete = [r for r in rows if r["state"] == TRIAL_COMPLETE]
    if not complete:
        return None
    if config.multi_objective:  # the most accurate point of the Pareto front
        front = {t.number for t in study.best_trials}
        return max((r for r in complete if r["number"] in front), key=lambda r: (r["values"][0], -r["values"][1]))
    return max(complete, key=lambda r: r["values"][0])


def write_best(study_dir: Path, config: TuneConfig, space: SearchSpace, best: dict[str, Any]) -> Path:
    """``best.yaml``: every fine-tuning option of the best trial (``edgetl finetune --config`` reads it)."""
    import yaml

    from .._io import write_text
    from .objective import finetune_options

    options = finetune_options(best["params"], space.fixed, config.data)
    header = (f"# best trial {best['number']} of study {study_dir.name}: val top-1 {100 * best['values'][0]:.2f}%\n"
              f"# retrain: edgetl finetune --config {study_dir / BEST_NAME} -o RUN\n")
    return write_text(study_dir / BEST_NAME, header + yaml.safe_dump(options, sort_keys=False))


def write_report(study: Any, path: Path, rows: list[dict[str, Any]], config: TuneConfig) -> Path:
    from .._io import write_text

    complete = [r for r in rows if r["state"] == TRIAL_COMPLETE]
    importances = _importances(study, len(complete), config)
    parts = [f"<h1>edgetl tune: {html.escape(study.study_name)}</h1>",
             f"<p>{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in _counts(rows).items()) + "</p>",
             "<h2>Optimisation history (val top-1)</h2>", _history_svg(rows)]
    if config.multi_objective:
        parts += ["<h2>Accuracy and latency</h2>", _pareto_svg(study, complete)]
    parts += ["<h2>Parameter importances</h2>", _importance_html(importances, len(complete))]
    parts += ["<h2>Trials</h2>", "<pre>" + html.escape(format_table(rows, config.multi_objective)) + "</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>edgetl tune</title><style>"
            "body{font-family:sans-serif;margin:2em}pre{font-size:12px}td{padding:2px 8px}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    return write_text(path, page)


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def _importances(study: Any, n_complete: int, config: TuneConfig) -> dict[str, float] | None:
    if n_complete < 2:
        return None
    import optuna

    try:
        # of top-1; a target is taken as minimised (Optuna's PED-ANOVA evaluator): negate the accuracy
        target = (lambda t: -t.values[0]) if config.multi_objective else None
        return optuna.importance.get_param_importances(study, target=target)
    except Exception as exc:  # e.g. every complete trial sampled the same values
        log.info("parameter importances not computed: %s", exc)
        return None


def _importance_html(importances: dict[str, float] | None, n_complete: int) -> str:
    if importances is None:
        return (f"<p>Not computed: they need at least 2 complete trials with differing parameters "
                f"({n_complete} complete).</p>")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td><td><svg width='{int(300 * v) + 1}' height='10'>"
                   f"<rect width='{int(300 * v) + 1}' height='10' fill='#4a7'/></svg></td></tr>"
                   for k, v in importances.items())
    return f"<table>{rows}</table>"


def _history_svg(rows: list[dict[str, Any]], width: int = 640, height: int = 240) -> str:
    points = [(r["number"], r["values"][0], r["state"]) for r in rows if r["values"]]
    if not points:
        return "<p>No trial has a value yet.</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(max(ys), min(ys) + 1e-3)

    def pos(x: float, y: float) -> tuple[float, float]:
        return 40 + (width - 60) * (x - x0) / (x1 - x0), height - 30 - (height - 50) * (y - y0) / (y1 - y0)

    dots = "".join(f"<circle cx='{pos(x, y)[0]:.1f}' cy='{pos(x, y)[1]:.1f}' r='4' fill='"
                   f"{'#999' if s == 'pruned' else '#36c'}'><title>trial {x}: {100 * y:.2f}% ({s})</title></circle>"
                   for x, y, s in points)
    best, line = -1.0, []
    for x, y, s in points:
        if s == TRIAL_COMPLETE:
            best = max(best, y)
        if best >= 0:
            line.append("%.1f,%.1f" % pos(x, best))
    axis = (f"<text x='40' y='{height - 8}' font-size='11'>trial {x0}..{max(xs)}</text>"
            f"<text x='2' y='24' font-size='11'>{100 * y1:.1f}%</text>"
            f"<text x='2' y='{height - 30}' font-size='11'>{100 * y0:.1f}%</text>")
    path = f"<polyline points='{' '.join(line)}' fill='none' stroke='#c33'/>" if line else ""
    return (f"<svg width='{width}' height='{height}' style='border:1px solid #ccc'>{axis}{path}{dots}</svg>"
            "<p>Blue: complete, grey: pruned (its last value), red: best so far.</p>")


def _pareto_svg(study: Any, complete: list[dict[str, Any]], width: int = 640, height: int = 240) -> str:
    if not complete:
        return "<p>No complete trial yet.</p>"
    front = {t.number for t in study.best_trials}
    ms, acc = [r["values"][1] for r in complete], [r["values"][0] for r in complete]
    mx0, mx1, ay0, ay1 = min(ms), max(max(ms), min(ms) + 1e-3), min(acc), max(max(acc), min(acc) + 1e-3)
    dots = "".join(
        f"<circle cx='{40 + (width - 60) * (r['values'][1] - mx0) / (mx1 - mx0):.1f}' "
        f"cy='{height - 30 - (height - 50) * (r['values'][0] - ay0) / (ay1 - ay0):.1f}' r='4' "
        f"fill='{'#c33' if r['number'] in front else '#999'}'><title>trial {r['number']}: "
        f"{100 * r['values'][0]:.2f}%, {r['values'][1]:.2f} ms</title></circle>" for r in complete)
    return (f"<svg width='{width}' height='{height}' style='border:1px solid #ccc'>{dots}</svg>"
            f"<p>x: latency {mx0:.2f}..{mx1:.2f} ms, y: val top-1; red: the Pareto front.</p>")
