"""Build edgetl's wheel and import every edgetl module from it, so a package forgotten by the build fails CI.

Run inside the CI venv (the dependencies are there); the wheel is unpacked into a temporary folder that
shadows the editable install.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = """
import importlib, pkgutil, sys
import edgetl
assert edgetl.__file__.startswith(sys.argv[1]), edgetl.__file__
names = [m.name for m in pkgutil.walk_packages(edgetl.__path__, "edgetl.")]
for name in names:
    importlib.import_module(name)
from edgetl.profiles import list_targets
assert list_targets(), "no target profiles in the wheel"
print(f"wheel OK: {len(names)} modules import, targets: {', '.join(list_targets())}")
"""

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", tmp], check=True)
    wheel = glob.glob(f"{tmp}/edgetl-*.whl")[0]
    site = Path(tmp) / "site"
    zipfile.ZipFile(wheel).extractall(site)
    source_modules = {p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
                      for p in (REPO / "edgetl").rglob("*.py") if "__pycache__" not in p.parts}
    wheel_modules = {p.relative_to(site).with_suffix("").as_posix().replace("/", ".")
                     for p in (site / "edgetl").rglob("*.py")}
    missing = sorted(source_modules - wheel_modules)
    if missing:
        sys.exit(f"the wheel lacks {missing}: check package discovery in setup.py / pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-c", CODE, str(site)], check=True, cwd=tmp, env=env)
