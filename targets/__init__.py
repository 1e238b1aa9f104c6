"""Device profiles as data (``*.yaml``), shipped as ``edgetl.targets``; read by :mod:`edgetl.profiles`."""
