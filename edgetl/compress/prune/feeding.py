"""The activations a layer-by-layer reconstruction needs, without re-running the whole network per layer.

For layer ``L`` the solver needs the *student's* input to ``L`` (fed by the already-repaired layers before
it) and the *teacher's* output of ``L``, on every calibration batch. Running both networks from the image
up to ``L`` for every layer costs about half a forward pass per layer; with dozens of layers and several
augmented views of each image that is most of the pruning time.

Most backbones are chains: ``nn.Sequential`` containers (timm's ``blocks``, torchvision's ``features``) run
their children in order, so the input of child ``k + 1`` is the output of child ``k``. :class:`Feeder`
flattens nested plain ``Sequential`` containers into chains of *units* and keeps, for the unit being
solved, both networks' inputs to it in memory: a layer inside a unit needs only that unit run, and moving
on runs each cached input through one unit. Layers outside any chain (a stem, a head) fall back to running
the networks from the image, stopping at the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class _Stop(Exception):
    """Raised from a forward hook once the wanted activation is captured: the rest of the forward is skipped."""


def chains(model: Any) -> list[list[str]]:
    """The model's chains: for every outermost plain ``nn.Sequential`` (its own ``forward``), the names of
    the modules it runs in order, nested plain Sequentials flattened."""
    import torch.nn as nn

    def plain(module: Any) -> bool:
        return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward

    def flatten(module: Any, prefix: str) -> list[str]:
        units: list[str] = []
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            units += flatten(child, name) if plain(child) else [name]
        return units

    found: list[list[str]] = []
    covered: list[str] = []
    for name, module in model.named_modules():
        if plain(module) and not any(name == c or name.startswith(c + ".") for c in covered):
            units = flatten(module, name)
            if len(units) > 1:
                found.append(units)
            covered.append(name)
    return found


class Feeder:
    """Yields ``(student input of L, teacher output of L)`` per calibration batch, for layers asked for in
    forward order; ``batches()`` must give the same batches every time it is called."""

    def __init__(self, student: Any, teacher: Any, batches: Callable[[], Iterable[Any]]) -> None:
        self.student, self.teacher, self.batches = student, teacher, batches
        self.s_modules, self.t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        self.units: dict[str, tuple[int, int]] = {}
        self.chains = chains(student)
        for c, units in enumerate(self.chains):
            for k, unit in enumerate(units):
                if unit in self.t_modules:
                    self.units[unit] = (c, k)
        self._at: tuple[int, int] | None = None
        self._cache: list[tuple[Any, Any]] = []

    def unit_of(self, name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in self.units:
                return prefix
        return None

    def pairs(self, name: str) -> Iterator[tuple[Any, Any]]:
        """``(x, y)`` per batch: the student's input to ``name`` and the teacher's output of ``name``."""
        unit = self.unit_of(name)
        if unit is None:
            for batch in self.batches():
                yield self._capture(name, self.student, batch, False), self._capture(name, self.teacher, batch, True)
            return
        self._move_to(self.units[unit])
        s_unit, t_unit = self.s_modules[unit], self.t_modules[unit]
        for xs, xt in self._cache:  # clones: a unit that starts with an in-place op must not edit the cache
            yield self._capture(name, s_unit, xs.clone(), False), self._capture(name, t_unit, xt.clone(), True)

    def release(self) -> None:
        self._cache, self._at = [], None

    def _move_to(self, where: tuple[int, int]) -> None:
        import torch

        chain, index = where
        if self._at is not None and self._at[0] == chain and self._at[1] <= index:
            units = self.chains[chain][self._at[1]:index]
            with torch.no_grad():
                for unit in units:
                    s_unit, t_unit = self.s_modules[unit], self.t_modules[unit]
                    self._cache = [(s_unit(xs), t_unit(xt)) for xs, xt in self._cache]
        else:
            unit = self.chains[chain][index]
            self._cache = []
            for batch in self.batches():
                self._cache.append((self._capture(unit, self.student, batch, False, entry=True),
                                    self._capture(unit, self.teacher, batch, True, entry=True)))
        self._at = where

    def _capture(self, name: str, runner: Any, batch: Any, teacher: bool, entry: bool = False) -> Any:
        """Run ``runner`` on ``batch`` until module ``name`` (of the student or teacher) is reached: its input
        (student, or ``entry``) or its output (teacher)."""
        import torch

        module = (self.t_modules if teacher else self.s_modules)[name]
        captured: list[Any] = []

        def take_input(_m: Any, args: tuple[Any, ...]) -> None:
            captured.append(args[0])
            raise _Stop

        def take_output(_m: Any, _args: Any, output: Any) -> None:
            captured.append(output)
            raise _Stop

        hook = (module.register_forward_hook(take_output) if teacher and not entry
                else module.register_forward_pre_hook(take_input))
        try:
            with torch.no_grad():
                runner(batch)
        except _Stop:
            pass
        finally:
            hook.remove()
        if not captured:
            from ...errors import ModelError

            raise ModelError(f"layer {name!r} did not run in the forward pass: it cannot be reconstructed")
        return captured[0]
