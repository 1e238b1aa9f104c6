"""Hyperparameter search over fine-tuning options with Optuna (``edgetl tune``).

``config`` (``TuneConfig``), ``space`` (the searched options, from YAML), ``objective`` (one trial = one
child run of the study folder, pruned at epoch ends), ``storage`` (SQLite, journal file, any RDB URL;
resume and stale trials), ``study`` (``tune()``, worker processes), ``report`` (table, best.yaml, HTML).
Optuna is imported only when a study runs (``pip install 'edgetl[tune]'``).
"""

from __future__ import annotations

from .config import OBJECTIVES, PRUNERS, SAMPLERS, TuneConfig, TuneResult
from .space import DEFAULT_SPACE, Param, SearchSpace, load_space, parse_space
from .study import tune

__all__ = ["DEFAULT_SPACE", "OBJECTIVES", "PRUNERS", "Param", "SAMPLERS", "SearchSpace", "TuneConfig", "TuneResult",
           "load_space", "parse_space", "tune"]
