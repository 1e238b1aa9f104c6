"""``python -m edgetl.runtime predict BUNDLE IMAGES...`` / ``python -m edgetl.runtime bench BUNDLE``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
