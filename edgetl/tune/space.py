"""The search space: which fine-tuning options a study samples, and over which values.

A space is a mapping of :class:`~edgetl.finetune.FinetuneConfig` option names to one of

- ``{low: 1e-4, high: 1e-2, log: true}`` (a float or int range; ``step`` optional; ints when both bounds are ints),
- ``{choices: [linear-probe, full]}`` (a categorical choice: strategies, batch sizes, backbones, ``augment``),
- a plain value (fixed for every trial, not searched: ``image_size: 160``).

Every bound and choice is checked against :class:`FinetuneConfig`'s own validation before a trial runs,
so an unknown option or an impossible range is a one-line :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import convert_value
from ..errors import ConfigError, did_you_mean

NOT_SEARCHABLE = ("data", "output", "val", "weights", "workers", "threads", "strict", "save_every_epoch")
"""Options that describe where data and runs live or how a process runs, not what is trained."""

DEFAULT_SPACE: dict[str, Any] = {
    "strategy": {"choices": ["linear-probe", "full", "gradual"]},
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "backbone_lr_scale": {"low": 0.01, "high": 1.0, "log": True},
    "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [16, 32]},
    "augment": {"choices": [True, False]},
    "augment_strength": {"low": 0.5, "high": 1.5},
    "epochs": {"low": 3, "high": 10},
}
"""The built-in space: what the transfer-learning tutorials tune by hand (backbone and image size stay fixed)."""


@dataclass(frozen=True)
class Param:
    """One searched option: a range (``low``/``high``, optionally ``log`` or ``step``) or ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` samples for this option."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        """Values for the grid sampler: the choices, every int of a small range, or 5 points of a float range."""
        if self.choices is not None:
            return list(self.choices)
        if self.is_int:
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        if self.step:
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return [float(f"{math.exp(a + i * (b - a) / 4):.3g}") for i in range(5)]
        return [float(f"{self.low + i * (self.high - self.low) / 4:.6g}") for i in range(5)]


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters and fixed options; ``sample(trial)`` gives the options of one trial."""

    params: tuple[Param, ...]
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)

    def sample(self, trial: Any) -> dict[str, Any]:
        return {**self.fixed, **{p.name: p.suggest(trial) for p in self.params}}

    def grid(self) -> dict[str, list[Any]]:
        return {p.name: p.grid() for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.fixed)
        for p in self.params:
            out[p.name] = {"choices": list(p.choices)} if p.choices is not None else {
                k: v for k, v in (("low", p.low), ("high", p.high), ("log", p.log), ("step", p.step)) if v}
            if p.choices is None:
                out[p.name].update(low=p.low, high=p.high)
        return out


def load_space(path: str | Path | None) -> SearchSpace:
    """The space in a YAML file (``None``: :data:`DEFAULT_SPACE`), validated."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default space")
    from ..config import load_config_file

    data = load_config_file(path)  # the same reader as --config: missing file, bad YAML, not a mapping
    if not data:
        raise ConfigError(f"{path} must map fine-tuning option names to ranges, choices or values")
    return parse_space(data, str(path))


def parse_space(data: dict[str, Any], source: str = "search space") -> SearchSpace:
    """Validate a mapping (see the module doc); a bad key or range is a one-line :class:`ConfigError`."""
    from ..finetune import FinetuneConfig

    names = [f.name for f in dataclasses.fields(FinetuneConfig)]
    params, fixed = [], {}
    for raw_key, spec in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in names:
            raise ConfigError(f"{source}: unknown fine-tuning option {raw_key!r}.{did_you_mean(key, names)}")
        if key in ("data", "output"):
            raise ConfigError(f"{source}: {key} is set by edgetl tune (DATA, -o), not by the search space")
        if isinstance(spec, dict):
            if key in NOT_SEARCHABLE:
                raise ConfigError(f"{source}: {key} cannot be searched (it can only be fixed: {key}: VALUE)")
            params.append(_param(key, spec, source))
        else:
            fixed[key] = _check_value(key, spec, source)
    return SearchSpace(tuple(params), fixed)


def _param(key: str, spec: dict[str, Any], source: str) -> Param:
    where = f"{source}: {key}"
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (a range takes low, high, log, step; "
                          "a choice takes choices)")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        choices = [_check_value(key, value, source) for value in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices repeat a value")
        return Param(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices: [...])")
    kind = _field_kind(key)
    if kind not in (int, float):
        raise ConfigError(f"{where}: {key} is not numeric: give choices: [...] instead of a range")
    low, high = (convert_value(kind, spec[bound], f"{where}: {bound}") for bound in ("low", "high"))
    log = convert_value(bool, spec.get("log", False), f"{where}: log")  # "false" is not false
    step = None if spec.get("step") is None else convert_value(kind, spec["step"], f"{where}: step")
    if kind is float:
        low, high = float(low), float(high)
    if not low < high:
        raise ConfigError(f"{where}: impossible range, low {low} must be less than high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, not {low}")
    if log and step:
        raise ConfigError(f"{where}: a range is either log or stepped, not both")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"{where}: step {step} must be positive and at most high - low")
    for value in (low, high):
        _check_value(key, value, source)
    return Param(key, low=low, high=high, log=log, step=step)


def _field_kind(key: str) -> Any:
    from ..finetune import FinetuneConfig

    annotation = typing.get_type_hints(FinetuneConfig)[key]
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if args[0] in (int, float, bool, str) else str


def _check_value(key: str, value: Any, source: str) -> Any:
    """``value`` converted to ``key``'s field type (the strict conversion of ``--config``) and checked by
    FinetuneConfig's own validation."""
    from ..config import field_types
    from ..finetune import FinetuneConfig

    value = convert_value(field_types(FinetuneConfig)[key], value, f"{source}: {key}")
    if key in ("batch_size", "image_size", "epochs") and value is not None and value < (8 if key == "image_size" else 1):
        raise ConfigError(f"{source}: {key}: {value} is out of range")
    if key in ("weight_decay", "backbone_lr_scale", "warmup_epochs") and value is not None and value < 0:
        raise ConfigError(f"{source}: {key}: {value} cannot be negative")
    try:
        FinetuneConfig(data=".", **{key: value})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None
    return value
