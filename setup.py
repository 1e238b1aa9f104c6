"""Package discovery only (everything else is in pyproject.toml): every ``edgetl.*`` package is found,
and the top-level ``targets/`` folder of device profiles ships as ``edgetl.targets``."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["edgetl", "edgetl.*"]), "edgetl.targets"])
