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
import math
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


def check_keys(cls_or_names: type | set[str], data: dict[str, Any], source: str, hint: str = "") -> None:
    """Unknown keys are a one-line :class:`ConfigError` with the closest known names (and ``hint``)."""
    names = set(config_fields(cls_or_names)) if isinstance(cls_or_names, type) else cls_or_names
    for key in data:
        if key not in names:
            raise ConfigError(f"{source}: unknown option {key!r}{hint}.{did_you_mean(key, sorted(names))}")


# -- strict conversion of values (config files, recorded options, settings blocks) -------------------------
class _Mismatch(Exception):
    """A value that does not fit an annotation; ``args[0]`` says what it must be."""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {name: hints.get(name, Any) for name in config_fields(cls)}


def field_types(*classes: type) -> dict[str, Any]:
    """Field name -> resolved annotation for the init fields of ``classes`` (the first class wins)."""
    out: dict[str, Any] = {}
    for cls in classes:
        out.update({k: v for k, v in _hints(cls).items() if k not in out})
    return out


_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _convert(tp: Any, value: Any) -> Any:
    """``value`` as ``tp``, strictly: bool only from true/false, int never from a float or bool, float also
    from a numeric string (YAML reads ``1e-3`` as one), str never from a list, mapping or bool, a tuple from
    a list or one value, Literal from its choices, None only for Optional; other annotations pass through."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wanted = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value)
            except _Mismatch as exc:
                wanted.append(exc.args[0])
        raise _Mismatch(" or ".join(wanted + (["null"] if type(None) in args else [])))
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch("one of " + ", ".join(map(str, args)))
    if origin is tuple and (len(args) == 2 and args[1] is Ellipsis):
        item = args[0]
        what = f"{_convert_name(item)} or a list of {_PLURAL.get(item, 'values')}"
        try:
            return tuple(_convert(item, v) for v in value) if isinstance(value, (list, tuple)) else \
                (_convert(item, value),)
        except _Mismatch:
            raise _Mismatch(what) from None
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch("a mapping")
        key_tp, value_tp = args or (Any, Any)
        try:
            return {_convert(key_tp, k): _convert(value_tp, v) for k, v in value.items()}
        except _Mismatch:
            raise _Mismatch(f"a mapping of {_PLURAL.get(key_tp, 'keys')} to {_PLURAL.get(value_tp, 'values')}") \
                from None
    return _scalar(tp, value)


def _scalar(tp: Any, value: Any) -> Any:
    import numbers
    import os

    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value if isinstance(value, int) else float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = float("nan")
            if math.isfinite(number):
                return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a folder named 2024, target_macs: 200000000
    else:
        return value  # Any, Path, ...: not checked here
    raise _Mismatch(_convert_name(tp))


def _convert_name(tp: Any) -> str:
    return {bool: "true or false (a YAML boolean, unquoted)", int: "an integer", float: "a number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def show_value(value: Any) -> str:
    """A value as a user typed it, shortened: null, true/false, or its (truncated) repr."""
    import reprlib

    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = 60, 60, 6, 6, 3
    return short.repr(value)


def convert_value(tp: Any, value: Any, what: str) -> Any:
    """``value`` converted to the annotation ``tp`` (see :func:`_convert`), or a one-line
    :class:`ConfigError` "WHAT must be EXPECTED, got VALUE"."""
    try:
        return _convert(tp, value)
    except _Mismatch as exc:
        raise ConfigError(f"{what} must be {exc.args[0]}, got {show_value(value)}") from None


def typed_values(hints: dict[str, Any], data: dict[str, Any], source: str, label: str = "option") -> dict[str, Any]:
    """Every value of ``data`` converted to its field's annotation in ``hints`` (name -> type; a name not
    there passes unchanged): the one strict conversion that config files, recorded options and settings
    blocks share. A wrong type is "SOURCE: LABEL 'NAME' must be ..., got ..."."""
    prefix = f"{source}: " if source else ""
    return {k: convert_value(hints[k], v, f"{prefix}{label} {k!r}") if k in hints else v for k, v in data.items()}


def config_from_dict(cls: type, data: dict[str, Any], source: str, label: str = "option") -> Any:
    """``cls`` from a mapping: an unknown key, a missing required one or a wrong type is a one-line
    :class:`ConfigError` naming it."""
    check_keys(cls, data, source, f" ({cls.__name__} has no such field: check its spelling, or the edgetl "
                                  "version that wrote it)")
    for name, field in config_fields(cls).items():
        if name not in data and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: {label} {name!r} is required ({cls.__name__} has no default for it): set it")
    return cls(**typed_values(field_types(cls), data, source, label))


def check_fields(config: Any) -> None:
    """For ``__post_init__``: convert every field of a (possibly frozen) dataclass instance in place, so the
    Python API checks types as config files do; a wrong type names the class, the field and the type."""
    cls = type(config)
    for name, tp in _hints(cls).items():
        value = getattr(config, name)
        new = convert_value(tp, value, f"{cls.__name__}: option {name!r}")
        if new is not value:
            object.__setattr__(config, name, new)


def settings_from_dict(cls: type, data: dict[str, Any], source: str = "", what: str = "setting") -> Any:
    """``cls(**data)`` for a settings dataclass read from a YAML block; an unknown key is a one-line
    :class:`ConfigError` naming the block (``source``), the closest known key and every key it takes; each
    value is converted as :func:`typed_values` does (a wrong type names the key and the type it takes)."""
    known = list(config_fields(cls))
    where = f"{source} " if source else ""
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}{what} {key!r} is unknown.{did_you_mean(key, known)} It takes: {', '.join(known)}")
    return cls(**typed_values(field_types(cls), data, source, what))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of option names (``batch-size`` or ``batch_size``) to values (read by the
    alias-refusing :func:`~edgetl._yaml.load_yaml`)."""
    from ._yaml import load_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


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
    if base is bool and default is None and not opt.decls:  # tri-state: on, off, or the tool decides
        decls = (f"{flag}/--no-{name.replace('_', '-')}",)
        return click.option(*decls, name, default=None, help=help_text, hidden=opt.hidden)
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


def _is_flag(base: Any, opt: Opt, default: Any = False) -> bool:
    """A one-way flag (``--x`` or ``--no-x``): a bool field with a bool default and no ``--a/--b`` pair."""
    return base is bool and default is not None and not (opt.decls and "/" in opt.decls[0])


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

    types_ = {**field_types(*classes), **{name: spec[1] for name, spec in fields.items()}}

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, config_file: Path | None = None, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            from_file = load_config_file(config_file) if config_file else {}
            check_keys(set(fields) | set(skip), from_file, str(config_file))
            from_file = typed_values(types_, from_file, str(config_file))  # before any work starts
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
    if _is_flag(base, opt, field.default):
        return (not field.default) if given and raw else field.default
    if opt.multiple:
        raw = tuple(raw) or None
    if opt.to_field is not None:
        return opt.to_field(raw)
    if raw is None and field.default is not dataclasses.MISSING:
        return field.default
    return str(raw) if isinstance(raw, Path) else raw


def build(cls: type, values: dict[str, Any], **overrides: Any) -> Any:
    """``cls`` from the fields of ``values`` it has (and ``overrides``), each converted strictly to its
    field's type (:func:`typed_values`); a bad value is a one-line error naming the option."""
    own = {**{k: v for k, v in values.items() if k in config_fields(cls)}, **overrides}
    return config_from_dict(cls, own, cls.__name__)
