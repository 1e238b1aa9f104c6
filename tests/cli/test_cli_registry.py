"""The command line tested over its registry (the click group, walked): every command's ``--help`` lists
every option, and every ``edgetl ...`` line of the README, docs/*.md and the group's help parses with
click exactly as a user would type it, with nothing executed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgetl.cli import cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _walk(group: click.Group, path: tuple[str, ...] = ()):
    """(path, command) of every command under ``group``, nested groups included (lazy groups too)."""
    ctx = click.Context(group, info_name=" ".join(("edgetl", *path)))
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


COMMANDS = {(): cli, **dict(_walk(cli))}


def _long_names(command: click.Command) -> list[str]:
    return [name for param in command.params if isinstance(param, click.Option) and not param.hidden
            for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]


def _listed_options(help_text: str) -> set[str]:
    """The long names in the first column of the help's Options section (not those its prose mentions)."""
    section = help_text.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    columns = re.findall(r"^  (-\S.*?)(?: {2,}|$)", section, re.M)
    return {name for column in columns for name in re.findall(r"--\w[\w-]*", column)}


# -- (a) --help of every command ------------------------------------------------------------------------
def test_the_registry_is_walked():
    assert {"finetune", "export", "bench", "status"} <= {path[0] for path in COMMANDS if path}


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("edgetl", *p)))
def test_help_lists_every_option_and_subcommand(path: tuple[str, ...]):
    command = COMMANDS[path]
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="edgetl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('edgetl', *path))} "), result.output[:200]
    assert [name for name in _long_names(command) if name not in _listed_options(result.output)] == []
    if isinstance(command, click.Group):
        listed = result.output.split("\nCommands:\n", 1)[1]
        ctx = click.Context(command, info_name="edgetl")
        visible = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]
        assert visible and [n for n in visible if not re.search(rf"^  {re.escape(n)}\b", listed, re.M)] == []


# -- (b) the documented command lines parse -------------------------------------------------------------
def _code_lines(text: str):
    """(line number, line) inside fenced (possibly indented) or indented code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            yield number, line


def _logical_lines(lines):
    """Lines joined over ``\\`` continuations, and over the indented ``[...]`` lines of a usage synopsis."""
    number, current = None, ""
    for n, line in lines:
        if current.endswith("\\"):
            current = current[:-1] + " " + line.strip()
        elif current and "[" in current and line.strip().startswith("["):
            current += " " + line.strip()
        else:
            if current:
                yield number, current
            number, current = n, line.strip()
    if current:
        yield number, current


def _documented_commands():
    """(where, the ``edgetl ...`` text) of every command line the docs show; also after ``&&``, ``$ `` and
    torchrun's ``-m``. Comments are cut by shlex."""
    sources = [(p.name, _code_lines(p.read_text(encoding="utf-8"))) for p in DOCS]
    sources.append(("edgetl --help", enumerate((cli.help or "").splitlines(), 1)))
    for name, lines in sources:
        for number, line in _logical_lines(lines):
            match = re.search(r"(?:^\$?\s*|&&\s*|;\s*|\s-m\s+)(edgetl\s.*)", line)
            if match:  # up to a following shell operator (a synopsis' a|b has no spaces)
                yield f"{name}:{number}", re.split(r"\s(?:&&|;|\|\|?)\s", match.group(1))[0].strip()


def _is_placeholder(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*|[A-Z]+\.\w+", v) for v in values)


def _resolve(argv: list[str]) -> tuple[click.Command, click.Context, list[str]]:
    """The command ``argv`` names (``argv`` without the leading ``edgetl``), its parent context (group options
    parsed, nothing invoked) and its own arguments."""
    group, ctx, info_name = cli, None, "edgetl"
    while True:
        ctx = group.make_context(info_name, list(argv), parent=ctx)
        rest = ctx.args  # a group leaves the tokens after the command name here
        name = argv[len(argv) - len(rest) - 1]
        command = group.get_command(ctx, name)
        assert command is not None, f"edgetl has no command {name!r}"
        if not isinstance(command, click.Group):
            return command, ctx, rest
        group, argv, info_name = command, rest, name


def _variants(tokens: list[str]) -> list[list[str]]:
    """One command line per alternative of a synopsis' ``a|b|c`` values and ``--x/--y`` flags."""
    choices = [t.split("/") if t.startswith("--") and "/--" in t else t.split("|") for t in tokens]
    return [[c[min(i, len(c) - 1)] for c in choices] for i in range(max(map(len, choices), default=1))]


def _check_synopsis(command: click.Command, parent: click.Context, tokens: list[str]) -> None:
    """A usage synopsis (``[--opt N]``, ``a|b``): every option exists and takes its value, and every value
    that is not a placeholder (N, PCT, OLD.json) is one the option accepts."""
    for variant in _variants(tokens):
        ctx = click.Context(command, info_name=command.name, parent=parent)
        values, _, _ = command.make_parser(ctx).parse_args(list(variant))
        for param in command.params:
            if param.name in values and not _is_placeholder(values[param.name]):
                param.type_cast_value(ctx, values[param.name])


def _parse(text: str) -> None:
    """Parse a documented line as click parses it (nothing is invoked); a usage synopsis as a synopsis."""
    synopsis = "[" in text
    argv = shlex.split(text.replace("[", " ").replace("]", " ") if synopsis else text, comments=True)
    assert argv[0] == "edgetl"
    command, parent, rest = _resolve(argv[1:])
    if synopsis:
        _check_synopsis(command, parent, rest)
    else:  # types, choices, counts and required arguments, as the real command line parses them
        command.make_context(command.name, rest, parent=parent, resilient_parsing=False)


DOCUMENTED = list(_documented_commands())


def test_the_docs_show_the_main_commands():
    assert {shlex.split(text, comments=True)[1] for _, text in DOCUMENTED} >= {"finetune", "export", "bench"}


@pytest.mark.parametrize("where, text", [pytest.param(w, t, id=f"{w} {t}"[:90]) for w, t in DOCUMENTED])
def test_documented_command_line_parses(where: str, text: str):
    _parse(text)


@pytest.mark.parametrize("text, error, match", [
    ("edgetl bench RUN --no-such-option", click.NoSuchOption, "No such option '--no-such-option'"),
    ("edgetl export RUN --precision int4", click.BadParameter, "'int4' is not one of"),
    ("edgetl finetune DATA --epochs 0", click.BadParameter, "0 is not in the range x>=1"),
    ("edgetl finetune DATA --epochs", click.BadOptionUsage, "'--epochs' requires an argument"),
    ("edgetl predict", click.MissingParameter, "source"),
    ("edgetl tune DATA --sampler tpe|bayes [--trials N]", click.BadParameter, "'bayes' is not one of"),
    ("edgetl bench RUN [--no-such-option N]", click.NoSuchOption, "No such option '--no-such-option'"),
    ("edgetl nosuchcommand RUN", AssertionError, "edgetl has no command 'nosuchcommand'"),
])
def test_a_wrong_line_fails_to_parse(text: str, error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        _parse(text)
