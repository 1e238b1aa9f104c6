from __future__ import annotations

from pathlib import Path


def test_steady_allocator_applies_on_glibc():
    import platform
    import sys

    from edgetl._allocator import steady_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert steady_allocator() is expected


def test_bench_measuring_applies_it_before_any_runner_loads(monkeypatch):
    """``edgetl bench`` and the bundle runtime's bench both time through ``measure_report``: the allocator is
    set there, before the runners load, so neither caller can time with the default glibc behaviour."""
    import numpy as np
    import pytest

    from edgetl.bench import BenchConfig, harness

    run = {"run_dir": Path("run"), "model": {}, "classes": ["a", "b"]}
    calls = []
    monkeypatch.setattr(harness, "steady_allocator", lambda: calls.append("allocator") or True)

    def measure(*args, **kwargs):
        calls.append("runners")
        raise RuntimeError("stop here")

    monkeypatch.setattr(harness, "measure_artifacts", measure)
    with pytest.raises(RuntimeError, match="stop here"):
        harness.measure_report([], np.zeros((1, 3, 8, 8)), np.zeros(1), "x", BenchConfig(), **run)
    assert calls == ["allocator", "runners"]
    calls.clear()
    with pytest.raises(RuntimeError, match="stop here"):
        harness.measure_report([], np.zeros((1, 3, 8, 8)), np.zeros(1), "x", BenchConfig(steady_allocator=False),
                               **run)
    assert calls == ["runners"]
