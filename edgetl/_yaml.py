"""The one YAML reader for every user file (``--config``, search spaces, target profiles).

PyYAML's ``safe_load`` still expands anchors and aliases: a few hundred bytes of nested aliases (a
"billion laughs" file) become billions of list items once anything walks them. edgetl's files never need
them, so :class:`NoAliasLoader` refuses any anchor or alias outright while composing, before anything is
built, and :func:`load_yaml` turns every failure into one line naming the file.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


class AliasRefused(yaml.YAMLError):
    """An anchor (``&name``) or alias (``*name``) in a file edgetl reads."""


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`AliasRefused` at the first anchor or alias."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise AliasRefused(f"YAML {kind} {sign}{event.anchor} at line {event.start_mark.line + 1} is not "
                               "accepted (anchors and aliases are refused): write the values out in full")
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str, error: type[Exception] = ConfigError) -> Any:
    """The document in ``text`` (read from ``source``), or one-line ``error`` naming ``source``."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except AliasRefused as exc:
        raise error(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise error(f"{source} nests too deeply to be read: flatten it") from None
