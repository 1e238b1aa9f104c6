"""``python -m edgetl.cli`` (as ``python -m edgetl``)."""

from . import main

if __name__ == "__main__":
    main()
