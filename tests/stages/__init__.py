"""Tests of edgetl.stages (a package: its test_registry.py shares a basename with tests/backends/)."""
