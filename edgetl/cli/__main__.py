"""``python -m edgetl.cli`` (as ``python -m edgetl``)."""

from . import main

main()
