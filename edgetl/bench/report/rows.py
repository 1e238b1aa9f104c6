"""One flat row of display strings per artifact and batch, shared by the terminal table, Markdown and HTML."""

from __future__ import annotations

from typing import Any

COLUMNS = [("artifact", "artifact"), ("ran", "ran as"), ("batch", "batch"), ("p50", "p50 ms"), ("p90", "p90 ms"),
           ("p99", "p99 ms"), ("mean", "mean±std ms"), ("ips", "img/s"), ("speedup", "vs ref"), ("top1", "top-1"),
           ("drop", "drop pts [95% CI]"), ("agree", "agree"), ("maxdiff", "max|Δlogit|"), ("load", "load"),
           ("mem", "mem Δ"), ("size", "size")]
"""(key, title) of every column of the full table (terminal, Markdown, HTML)."""
SUMMARY_COLUMNS = [("artifact", "artifact"), ("ran", "ran"), ("p50", "p50 ms"),
                   ("speedup", "vs ref"), ("top1", "top-1"), ("drop", "drop [95% CI]")]
"""The columns that fit 80 characters (one batch size): ``render_table(report, SUMMARY_COLUMNS)``."""


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``value`` formatted, or an em dash for None."""
    return "—" if value is None else f"{value:{spec}}{suffix}"


def rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Display strings keyed like ``COLUMNS``: one row per artifact and batch, one for a skipped or failed one."""
    out = []
    for res in report["results"]:
        acc, vs, mem = res.get("accuracy") or {}, res.get("vs_reference") or {}, res.get("memory") or {}
        common = {
            "artifact": res["label"], "ran": res["precision_executed"] or "—",
            "size": fmt(res["size_bytes"] / 2**20 if res["size_bytes"] else None, ".1f", " MB"),
            "load": fmt(res["load_s"], ".2f", " s"),
            "mem": fmt(mem.get("model_peak_delta_mb"), ".0f", " MB") if "error" not in mem else "error",
            "top1": fmt(100 * acc["top1"] if acc else None, ".2f", "%"),
            "drop": ("ref" if vs.get("is_reference") else
                     f"{vs['top1_drop_pts']:+.2f} [{vs['ci95_pts'][0]:+.1f},{vs['ci95_pts'][1]:+.1f}]"
                     + (" ~" if vs["within_noise"] else " !")) if vs else "—",
            "agree": fmt(100 * vs["top1_agreement"] if vs else None, ".1f", "%"),
            "maxdiff": fmt(vs.get("max_abs_logit_diff"), ".2e"),
        }
        if res["status"] != "ok" or not res["latency"]:
            out.append({**common, "batch": "—", "p50": res["status"], "p90": "", "p99": "", "mean": "", "ips": "",
                        "speedup": "", "reason": res["reason"] or ""})
            continue
        for stat in res["latency"]:
            speed = (vs.get("speedup_vs_reference") or {}).get(str(stat["batch"]))
            out.append({**common, "batch": str(stat["batch"]), "p50": f"{stat['p50_stable_ms']:.3f}",
                        "p90": f"{stat['p90_ms']:.3f}", "p99": f"{stat['p99_ms']:.3f}",
                        "mean": f"{stat['mean_ms']:.3f}±{stat['std_ms']:.3f}", "ips": f"{stat['throughput_ips']:.1f}",
                        "speedup": fmt(speed, ".2f", "x"), "reason": ""})
    return out
