"""``--compare OLD.json``: an earlier report, checked when it is read so that comparing with it cannot fail
later, and the per-artifact, per-batch change in ``p50_stable_ms``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._io import read_json
from ..errors import ConfigError
from .config import SCHEMA_VERSION


def load_report(path: str | Path) -> dict[str, Any]:
    """An earlier report.json for ``--compare``, checked so that comparing with it cannot fail later."""
    data = read_json(path, ConfigError, f"--compare report not found: {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not an edgetl bench report: its top level is a JSON {_json_type(data)}, "
                          "not an object")
    if data.get("kind") != "edgetl.bench" or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{path} is not an edgetl bench report with schema_version {SCHEMA_VERSION}")
    problem = _report_problem(data)
    if problem:
        raise ConfigError(f"{path} is a damaged edgetl bench report: {problem}; compare with another report.json")
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _report_problem(data: dict[str, Any]) -> str | None:
    """What in a bench report :func:`compare_reports` could not read, or None."""
    results = data.get("results")
    if not isinstance(results, list):
        return f'no "results" list (found a JSON {_json_type(results)})'
    for i, res in enumerate(results):
        if not isinstance(res, dict) or not isinstance(res.get("key"), str):
            return f'results[{i}] is not an object with a "key"'
        latency = res.get("latency", [])
        if not isinstance(latency, list) or not all(
                isinstance(s, dict) and isinstance(s.get("batch"), int) and _positive(s.get("p50_stable_ms"))
                for s in latency):
            return f'results[{i}] ({res["key"]}) has a latency that is not a list of batch / p50_stable_ms entries'
        accuracy = res.get("accuracy") or {}
        if not isinstance(accuracy, dict) or _json_type(accuracy.get("top1")) not in ("number", "null"):
            return f'results[{i}] ({res["key"]}) has an accuracy that is not an object with a numeric "top1"'
    device = data.get("device") or {}
    if not isinstance(device, dict) or not isinstance(device.get("cpu", {}), dict):
        return '"device" is not an object with a "cpu" object'
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def compare_reports(old: dict[str, Any], new: dict[str, Any], fail_pct: float | None = None) -> dict[str, Any]:
    """Per artifact and batch: old and new p50_stable_ms, change in percent (positive = slower)."""
    old_by_key = {r["key"]: r for r in old["results"]}
    rows, only_new = [], []
    for res in new["results"]:
        before = old_by_key.get(res["key"])
        if before is None:
            only_new.append(res["key"])
            continue
        old_lat = {s["batch"]: s for s in before.get("latency", [])}
        for stat in res.get("latency", []):
            prev = old_lat.get(stat["batch"])
            if prev is None:
                continue
            change = 100.0 * (stat["p50_stable_ms"] - prev["p50_stable_ms"]) / prev["p50_stable_ms"]
            row = {"key": res["key"], "label": res["label"], "batch": stat["batch"], "old_ms": prev["p50_stable_ms"],
                   "new_ms": stat["p50_stable_ms"], "change_pct": change,
                   "regression": bool(fail_pct is not None and change > fail_pct)}
            old_top1 = (before.get("accuracy") or {}).get("top1")
            new_top1 = (res.get("accuracy") or {}).get("top1")
            if old_top1 is not None and new_top1 is not None:
                row["top1_change_pts"] = 100.0 * (new_top1 - old_top1)
            rows.append(row)
    new_keys = {r["key"] for r in new["results"]}
    old_cpu = (old.get("device") or {}).get("cpu", {}).get("model")
    new_cpu = (new.get("device") or {}).get("cpu", {}).get("model")
    return {"old_created": old.get("created"), "threshold_pct": fail_pct, "rows": rows, "only_new": only_new,
            "only_old": [k for k in old_by_key if k not in new_keys],
            "same_cpu": old_cpu == new_cpu, "old_cpu": old_cpu}
