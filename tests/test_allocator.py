from __future__ import annotations


def test_steady_allocator_applies_on_glibc():
    import platform
    import sys

    from edgetl._allocator import steady_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert steady_allocator() is expected


def test_bench_measuring_applies_it_before_any_runner_loads(monkeypatch):
    """``edgetl bench`` and the bundle runtime's bench both time through ``_measure``: the allocator is set
    there, before the runners load, so neither caller can time with the default glibc behaviour."""
    import numpy as np
    import pytest

    from edgetl.bench import BenchConfig, harness

    from types import SimpleNamespace

    run = SimpleNamespace(classes=["a", "b"])
    calls = []
    monkeypatch.setattr(harness, "steady_allocator", lambda: calls.append("allocator") or True)

    def measure(*args, **kwargs):
        calls.append("runners")
        raise RuntimeError("stop here")

    monkeypatch.setattr(harness, "measure_artifacts", measure)
    with pytest.raises(RuntimeError, match="stop here"):
        harness._measure([], run, np.zeros((1, 3, 8, 8)), np.zeros(1), "x", BenchConfig(), False)
    assert calls == ["allocator", "runners"]
    calls.clear()
    with pytest.raises(RuntimeError):
        harness._measure([], run, np.zeros((1, 3, 8, 8)), np.zeros(1), "x", BenchConfig(steady_allocator=False), False)
    assert calls == ["runners"]
