"""Typed configs to and from YAML, and the click options generated from them.

Every command's options come from its config dataclasses: each field becomes one option whose help is
the field's attribute docstring and whose default is the field's default, so nothing is typed twice.
``--config FILE.yaml`` sets any field; an option typed on the command line overrides the file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean


# -- dataclass <-> mapping ----------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (``x: int = 1`` followed by a string literal)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and \
                    isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.replace("``", "").split())
    return docs


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def check_keys(cls_or_names: type | set[str], data: dict[str, Any], source: str) -> None:
    """Unknown keys are a one-line :class:`ConfigError` with the closest known names."""
    names = set(config_fields(cls_or_names)) if isinstance(cls_or_names, type) else cls_or_names
    for key in data:
        if key not in names:
            raise ConfigError(f"{source}: unknown option {key!r}.{did_you_mean(key, sorted(names))}")


def settings_from_dict(cls: type, data: dict[str, Any], source: str = "", what: str = "setting") -> Any:
    """``cls(**data)`` for a settings dataclass read from a YAML block; an unknown key is a one-line
    :class:`ConfigError` naming the block (``source``), the closest known key and every key it takes."""
    known = list(config_fields(cls))
    for key in data:
        if key not in known:
            where = f"{source} " if source else ""
            raise ConfigError(f"{where}{what} {key!r} is unknown.{did_you_mean(key, known)} It takes: {', '.join(known)}")
    return cls(**data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of option names (``batch-size`` or ``batch_size``) to values."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def write_config_file(path: str | Path, config: Any) -> Path:
    """The resolved config as YAML (``--config`` reads it back)."""
    import yaml

    from ._io import write_text

    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


# -- click options from fields ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Opt:
    """How one field appears on the command line, where the generated default does not fit."""

    decls: tuple[str, ...] = ()
    """Option declarations (e.g. ``("-o", "--output")``, ``("--freeze-bn/--train-bn",)``)."""
    help: str | None = None
    type: Any = None
    to_field: Callable[[Any], Any] | None = None
    """Converts the parsed value into the field's value (e.g. patience 0 -> None)."""
    hidden: bool = False
    multiple: bool = False
    default: Any = None
    """The option's default as typed on the command line (when it differs from the field's value)."""


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type without Optional, whether None is allowed) for a resolved annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _click_type(annotation: Any) -> Any:
    import click

    base, _ = _base_type(annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(base)])
    return {int: int, float: float, str: str, bool: bool}.get(base, str)


def _generated(name: str, field: dataclasses.Field, annotation: Any, doc: str, opt: Opt):
    import click

    flag = "--" + name.replace("_", "-")
    base, _ = _base_type(annotation)
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    help_text = opt.help or doc or ""
    if _is_flag(base, opt):  # a flag turns the field away from its default
        decls = opt.decls or (f"--no-{name.replace('_', '-')}" if default else flag,)
        if default and not opt.help and help_text:
            help_text = f"Turn off: {help_text[0].lower()}{help_text[1:]}"
        return click.option(*decls, name, is_flag=True, default=False, help=help_text, hidden=opt.hidden)
    decls = opt.decls or (flag,)
    kwargs: dict[str, Any] = {"help": help_text, "hidden": opt.hidden, "multiple": opt.multiple}
    if "/" in decls[0]:
        return click.option(*decls, name, default=None, **kwargs)
    kwargs["type"] = opt.type or _click_type(annotation)
    shown = opt.default if opt.default is not None else default
    if shown not in (None, "") and not opt.multiple:
        kwargs.update(default=shown, show_default=True)
    return click.option(*decls, name, **kwargs)


def _is_flag(base: Any, opt: Opt) -> bool:
    return base is bool and not (opt.decls and "/" in opt.decls[0])


def options_from(*classes: type, skip: tuple[str, ...] = (), custom: dict[str, Opt] | None = None):
    """A decorator adding one click option per field of ``classes`` (shared names appear once) and
    ``--config FILE``. The command receives ``values`` (field -> value, with the precedence command line >
    config file > field default; ``skip``ped fields only when the file sets them) and ``given`` (the fields
    set on the command line or in the file), plus its own remaining arguments; :func:`build` makes configs."""
    import click

    custom = custom or {}
    fields: dict[str, tuple[dataclasses.Field, Any, str]] = {}
    for cls in classes:
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for name, field in config_fields(cls).items():
            if name not in skip and name not in fields:
                fields[name] = (field, hints[name], docs.get(name, ""))

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, config_file: Path | None = None, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            from_file = load_config_file(config_file) if config_file else {}
            check_keys(set(fields) | set(skip), from_file, str(config_file))
            values = {}
            for name in fields:
                raw = kwargs.pop(name)
                given = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
                values[name] = _field_value(name, raw, fields[name], custom.get(name, Opt()), given, from_file)
            values.update({k: v for k, v in from_file.items() if k in skip})
            kwargs["given"] = {n for n in fields if ctx.get_parameter_source(n) ==
                               click.core.ParameterSource.COMMANDLINE} | set(from_file)
            kwargs["values"] = values
            return command(*args, **kwargs)

        for name in reversed(list(fields)):
            field, annotation, doc = fields[name]
            wrapper = _generated(name, field, annotation, doc, custom.get(name, Opt()))(wrapper)
        return click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                            help="YAML file setting any of these options (flags typed here override it).")(wrapper)

    return decorate


def _field_value(name: str, raw: Any, spec: tuple, opt: Opt, given: bool, from_file: dict[str, Any]) -> Any:
    field, annotation, _ = spec
    base, _ = _base_type(annotation)
    if not given and name in from_file:
        return from_file[name]
    if _is_flag(base, opt):
        return (not field.default) if given and raw else field.default
    if opt.multiple:
        raw = tuple(raw) or None
    if opt.to_field is not None:
        return opt.to_field(raw)
    if raw is None and field.default is not dataclasses.MISSING:
        return field.default
    return str(raw) if isinstance(raw, Path) else raw


def build(cls: type, values: dict[str, Any], **overrides: Any) -> Any:
    """``cls`` from the fields of ``values`` it has (and ``overrides``); a bad value is a one-line error."""
    own = {**{k: v for k, v in values.items() if k in config_fields(cls)}, **overrides}
    try:
        return cls(**own)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
