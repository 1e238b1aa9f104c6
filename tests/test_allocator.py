from __future__ import annotations


def test_steady_allocator_applies_on_glibc():
    import platform
    import sys

    from edgetl._allocator import steady_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert steady_allocator() is expected
