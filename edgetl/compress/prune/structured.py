"""Structured channel pruning with Torch-Pruning: whole output channels (and everything that depends on
them: the BatchNorm after a conv, the depthwise conv and SE block that follow, the inputs of the next
layer, the other branches of a residual add) are removed, so the pruned network is a smaller dense one
that any runtime speeds up.

:class:`StructuredPruner` wraps ``torch_pruning.pruner.BasePruner`` (``MetaPruner`` is its alias);
:func:`prune_model` runs every step at once.

Torch-Pruning 1.6 behaviours this module relies on or works around:

- ``round_to`` rounds the kept channel count *down* (40 channels at ratio 0.4 keep 16, not 24); a group
  that would round to zero channels is left whole (Lite0's 16- and 24-channel layers stay as they are).
- Tracing calls ``model.eval()`` and never restores train mode; we restore every module's mode.
- Pruned parameters are new ``nn.Parameter`` objects with ``requires_grad=True``; we re-freeze the frozen.
- Given a bare tensor, it first tries ``model(*tensor)`` (the unbatched first image) inside a bare
  ``except`` and retries; we pass ``(tensor,)`` with a ``forward_fn`` so a real forward error surfaces.
- A forward without autograd history builds an empty graph silently (nothing pruned); we raise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError, EdgetlError, ModelError, did_you_mean
from ._tp import as_forward_args, channels, import_torch_pruning

log = logging.getLogger(__name__)
TRACE_ADVICE = ("Torch-Pruning runs the model on the example input with autograd on and follows the graph back; "
                "check that the model runs on that input, or choose a backbone it can trace")


@dataclass
class PruneSettings:
    """How to prune (from the ``pruning`` block of a config, or the CLI)."""

    ratio: float = 0.4
    """Fraction of the channels of each prunable group removed, in (0, 1); parameters and MACs fall by
    about ``1 - (1 - ratio)**2``."""
    importance: str = "magnitude"
    """``magnitude`` (L2 norm of the group's weights), ``taylor`` (weight x gradient: needs a loss) or
    ``lamp`` (layer-adaptive magnitude) or ``reconstruction`` (how well the consuming layer's output can be
    re-solved without the channel: :mod:`~edgetl.compress.prune.selection`; needs calibration scores)."""
    global_pruning: bool = False
    """False: every layer loses ``ratio`` of its channels; True: one ranking across layers."""
    round_to: int | None = 16
    """Channel counts kept as multiples of this (None or 1: no rounding)."""
    ignored: tuple[str, ...] = ()
    """Module names whose output channels are kept, besides the classifier heads."""
    iterative_steps: int = 1
    """``ratio`` is reached in this many equal steps (fine-tune between them)."""
    layer_ratios: dict[str, float] = field(default_factory=dict)
    """Module name -> ratio, in place of ``ratio`` for every channel group that holds one of its layers (a
    block's name covers its layers); within a group, the last entry that covers one of its layers wins."""
    importances: ClassVar[tuple[str, ...]] = ("magnitude", "taylor", "lamp", "reconstruction")

    def __post_init__(self) -> None:
        ratio = self.ratio
        if not _is_ratio(ratio):
            raise ConfigError(f"pruning ratio must be a number between 0 and 1 (exclusive), not {ratio!r}")
        if self.importance not in self.importances:
            raise ConfigError(f"pruning importance must be one of {', '.join(self.importances)}, not "
                              f"{self.importance!r}.{did_you_mean(str(self.importance), self.importances)}")
        if not isinstance(self.global_pruning, bool):
            raise ConfigError(f"pruning global_pruning must be true or false, not {self.global_pruning!r}")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise ConfigError(f"pruning round_to must be a positive whole number or null, not {self.round_to!r}")
        steps = self.iterative_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"pruning iterative_steps must be a whole number >= 1, not {steps!r}")
        ignored = (self.ignored,) if isinstance(self.ignored, str) else self.ignored
        if not isinstance(ignored, (list, tuple)) or not all(isinstance(n, str) and n for n in ignored):
            raise ConfigError(f"pruning ignored must be a list of module names, not {self.ignored!r}")
        self.ignored = tuple(ignored)
        if not isinstance(self.layer_ratios, dict) or not all(
                isinstance(n, str) and n and _is_ratio(r) for n, r in self.layer_ratios.items()):
            raise ConfigError("pruning layer_ratios must map module names to ratios between 0 and 1 (exclusive), "
                              f"not {self.layer_ratios!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> PruneSettings:
        """Settings from a config block; an unknown key is a :class:`ConfigError`."""
        from ...config import settings_from_dict

        return settings_from_dict(cls, data, source, "pruning setting")

    @property
    def effective_round_to(self) -> int | None:
        """What Torch-Pruning gets: None when no rounding is asked for."""
        return None if self.round_to in (None, 1) else self.round_to


def _is_ratio(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0 < value < 1)


def round_kept(n_pruned: int, current: int, round_to: int) -> int:
    """Channels to remove so that a multiple of ``round_to`` stays, and at least ``round_to``.

    Torch-Pruning rounds the kept count down, to 0 for a narrow group (32 channels at ratio 0.6 keep 12.8
    -> 0), and then skips the group: a stem stayed whole whatever the ratio. Here it keeps 16."""
    kept = current - n_pruned
    kept = max(round_to, kept - kept % round_to)
    return max(current - kept, 0)


class StructuredPruner:
    """One Torch-Pruning run over ``model`` (pruned in place), step by step.

    ``heads`` (the classifier's module names) and ``settings.ignored`` keep their output channels; their
    input channels still follow the layer that feeds them. ``example_inputs`` is one batch (a tensor, or a
    tuple of forward arguments) on the model's device; one image is enough.
    """

    def __init__(self, model: Any, example_inputs: Any, settings: PruneSettings, heads: list[str],
                 importance: Any = None) -> None:
        tp = import_torch_pruning()
        if importance is None and settings.importance == "reconstruction":
            raise ConfigError("reconstruction importance needs channel scores from calibration images: pass "
                              "importance=ReconstructionImportance(...) (edgetl prune does)")
        self.model = model
        self.settings = settings
        self.ignored = resolve_ignored(model, heads, settings.ignored)
        resolve_ignored(model, [], tuple(settings.layer_ratios), what="pruning layer_ratios name")
        self.kept_outputs: dict[str, list[int]] = {}
        """Module name -> the original index of each output channel it still has (modules that lost some)."""
        self.kept_inputs: dict[str, list[int]] = {}
        """The same for input channels (a classifier fed by a pruned layer: which parent features it reads)."""
        modules = dict(model.named_modules())
        ignored_layers = [modules[name] for name in self.ignored]
        args = as_forward_args(example_inputs)
        pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
        with _graph_context(model):
            try:
                self._pruner = pruner_cls(
                    model, args, importance or make_importance(tp, settings.importance),
                    pruning_ratio=settings.ratio, global_pruning=settings.global_pruning,
                    iterative_steps=settings.iterative_steps, round_to=settings.effective_round_to,
                    ignored_layers=ignored_layers,
                    pruning_ratio_dict=group_ratios(tp, model, args, settings.layer_ratios, ignored_layers) or None,
                    forward_fn=lambda m, a: m(*a))  # no retry with other argument forms: real errors surface
            except EdgetlError:
                raise
            except Exception as exc:
                raise ModelError(failure_message(model, exc, "build the dependency graph of", TRACE_ADVICE)) from exc
        self._pruner._round_to = round_kept  # the test on Lite0's stem fails if Torch-Pruning renames it
        if getattr(self._pruner, "initial_total_channels", None) == 0:
            raise ModelError(f"Torch-Pruning found no prunable channel group in {type(model).__name__}: every conv/"
                             "linear layer is ignored, or its forward has no autograd history (detached, run under "
                             "no_grad, or through ops it cannot follow)")

    @property
    def steps_done(self) -> int:
        return int(self._pruner.current_step)

    @property
    def steps_left(self) -> int:
        return self.settings.iterative_steps - self.steps_done

    def step(self, loss_fn: Callable[[Any], Any] | None = None) -> None:
        """One pruning step. ``taylor`` importance needs ``loss_fn(model)`` (a scalar loss on a batch,
        with the model in the mode the caller chose): its gradients rank the channels, then are cleared."""
        if self.steps_left <= 0:
            raise ConfigError(f"all {self.settings.iterative_steps} pruning step(s) are done")
        taylor = self.settings.importance == "taylor"
        if taylor and loss_fn is None:
            raise ConfigError("taylor pruning importance needs a loss (loss_fn) to rank channels by their "
                              "gradients; pass one, or use importance 'magnitude' or 'lamp'")
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        try:
            if taylor:
                self._backward(loss_fn)
            self._prune_step()
        finally:
            if taylor:
                self.model.zero_grad(set_to_none=True)
            for name, p in self.model.named_parameters():  # Torch-Pruning's pruned parameters are all trainable
                if name in frozen:
                    p.requires_grad_(False)
        log.debug("pruning step %d/%d done", self.steps_done, self.settings.iterative_steps)

    def _prune_step(self) -> None:
        number = self.steps_done + 1
        try:
            names = {id(m): n for n, m in self.model.named_modules()}  # before any group changes the model
            for group in self._pruner.step(interactive=True):
                self._record(group, names)
                group.prune()
        except EdgetlError:
            raise
        except Exception as exc:
            raise ModelError(failure_message(self.model, exc, f"run pruning step {number} on")) from exc

    def _record(self, group: Any, names: dict[int, str]) -> None:
        """Update :attr:`kept_outputs` / :attr:`kept_inputs` with the channels ``group`` removes (``names``:
        module id -> name)."""
        graph = self._pruner.DG
        for dep, idxs in group:
            name = names.get(id(dep.target.module))
            if name is None:
                continue
            side = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            record = self.kept_outputs if side == "out" else self.kept_inputs
            removed = {int(getattr(i, "idx", i)) for i in idxs}
            current = record.get(name) or list(range(channels(dep.target.module, side)))
            record[name] = [c for i, c in enumerate(current) if i not in removed]

    def _backward(self, loss_fn: Callable[[Any], Any]) -> None:
        import torch

        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad(), _all_trainable(self.model):
            loss = loss_fn(self.model)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ConfigError(f"loss_fn must return a scalar loss tensor, not {type(loss).__name__}"
                                  + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
            loss.backward()


def prune_model(model: Any, example_inputs: Any, settings: PruneSettings, heads: list[str],
                loss_fn: Callable[[Any], Any] | None = None) -> dict[str, int]:
    """Every step of ``settings`` at once (no fine-tuning between steps); ``model`` is pruned in place.

    ``macs_*`` are FlopCounterMode's conv/linear/matmul multiply-accumulates per image (the usual
    meaning of MACs); ``macs_tp_*`` Torch-Pruning's own count (see :func:`count_macs` for how they differ).
    """
    from .counting import count_macs

    before = count_macs(model, example_inputs)
    pruner = StructuredPruner(model, example_inputs, settings, heads)
    while pruner.steps_left:
        pruner.step(loss_fn)
    after = count_macs(model, example_inputs)
    return {"macs_before": before["macs_flop_counter"], "macs_after": after["macs_flop_counter"],
            "params_before": before["params"], "params_after": after["params"],
            "macs_tp_before": before["macs"], "macs_tp_after": after["macs"]}


def kept_modules(model: Any, patterns: tuple[str, ...], option: str = "--keep") -> tuple[str, ...]:
    """Module names matching ``patterns`` (exact names or fnmatch patterns); a pattern that matches nothing is a
    ConfigError naming close module names."""
    kept: list[str] = []
    for pattern in patterns:
        kept += [n for n in match_modules(model, pattern, option) if n not in kept]
    return tuple(kept)


def match_modules(model: Any, pattern: str, option: str, with_weights: bool = True) -> list[str]:
    """Names of the modules (with weights of their own, unless ``with_weights`` is False) that ``pattern``
    names exactly or as an fnmatch pattern; none is a ConfigError naming close module names."""
    import fnmatch

    names = [n for n, m in model.named_modules()
             if n and (not with_weights or any(True for _ in m.parameters(recurse=False)))]
    found = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
    if not found:
        kind = "module with weights" if with_weights else "module"
        raise ConfigError(f"{option} {pattern!r} matches no {kind}.{did_you_mean(pattern, names)}")
    return found


def parse_layer_ratios(items: Any, option: str = "--layer-ratio") -> tuple[tuple[str, float], ...]:
    """``("blocks.5=0.4", ...)`` (or a ``{pattern: ratio}`` mapping from a config file) -> ((pattern, ratio), ...)."""
    pairs = list(items.items()) if isinstance(items, dict) else [
        str(item).rpartition("=")[::2] for item in ((items,) if isinstance(items, str) else items or ())]
    parsed = []
    for pattern, ratio in pairs:
        try:
            value = float(ratio)
        except (TypeError, ValueError):
            value = None
        if not pattern or not _is_ratio(value):
            got = f"{pattern}={ratio}" if pattern else repr(ratio)
            raise ConfigError(f"{option} takes NAME=RATIO, a module name or pattern and a ratio in (0, 1) exclusive "
                              f"(e.g. 'blocks.5=0.4'); got {got}")
        parsed.append((str(pattern), value))
    return tuple(parsed)


def layer_ratio_modules(model: Any, pairs: tuple[tuple[str, float], ...],
                        option: str = "--layer-ratio") -> dict[str, float]:
    """Module name -> ratio for every module a pattern names (a block's name covers its layers); a later
    pattern overrides an earlier one, and a pattern that matches no module is a ConfigError."""
    ratios: dict[str, float] = {}
    for pattern, ratio in pairs:
        for name in match_modules(model, pattern, option, with_weights=False):
            ratios.pop(name, None)  # re-inserted last: the order is the priority (see group_ratios)
            ratios[name] = ratio
    return ratios


def group_ratios(tp: Any, model: Any, args: tuple[Any, ...], layer_ratios: dict[str, float],
                 ignored_layers: list[Any]) -> dict[Any, float]:
    """Torch-Pruning's ``pruning_ratio_dict`` for ``layer_ratios``: every layer of a channel group that holds
    a named layer (or a layer inside a named block) gets its ratio, the last name given winning within
    the group. Torch-Pruning itself takes the ratio of whichever named layer it meets first in a group, so
    a group's depthwise conv could override the ratio given to its expansion conv."""
    if not layer_ratios:
        return {}
    # a second trace (the pruner builds its own graph and takes no prebuilt one): only with layer ratios
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=args, forward_fn=lambda m, a: m(*a))
    names = {m: n for n, m in model.named_modules()}
    order = list(layer_ratios)
    ratios: dict[Any, float] = {}
    for group in graph.get_all_groups(ignored_layers=ignored_layers,
                                      root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
        members = {names[dep.target.module]: dep.target.module for dep, _ in group
                   if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)}
        covering = [i for name in members for i, key in enumerate(order) if name == key or name.startswith(key + ".")]
        if covering:
            ratios.update((m, layer_ratios[order[max(covering)]]) for m in members.values())
    return ratios


# -- helpers -----------------------------------------------------------------------------------------------

def resolve_ignored(model: Any, heads: list[str], ignored: tuple[str, ...] | list[str],
                    what: str = "pruning ignored layer") -> list[str]:
    """Head and ignored module names, checked against the model (duplicates dropped, order kept)."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for head in heads:
        if head not in known:
            raise ModelError(f"classifier head {head!r} is not a module of this model.{did_you_mean(head, names)}")
    for name in ignored:
        if name not in known:
            raise ConfigError(f"{what} {name!r} is not a module of this model."
                              f"{did_you_mean(name, names)}")
    return list(dict.fromkeys([*heads, *ignored]))


def make_importance(tp: Any, kind: str) -> Any:
    """The Torch-Pruning importance criterion for ``kind`` (names of 1.4 .. 1.6)."""
    imp = tp.importance
    if kind == "magnitude":
        return getattr(imp, "GroupMagnitudeImportance", getattr(imp, "MagnitudeImportance", None))(p=2)
    if kind == "taylor":
        return getattr(imp, "GroupTaylorImportance", getattr(imp, "TaylorImportance", None))()
    return imp.LAMPImportance(p=2)


@contextlib.contextmanager
def _graph_context(model: Any) -> Iterator[None]:
    """Autograd on and every parameter trainable while Torch-Pruning traces (it follows grad_fn); the
    module modes are restored afterwards (tracing switches the whole model to eval and leaves it so)."""
    import torch

    modes = {m: m.training for m in model.modules()}
    try:
        with torch.enable_grad(), _all_trainable(model):
            yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _all_trainable(model: Any) -> Iterator[None]:
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def failure_message(model: Any, exc: BaseException, doing: str, advice: str = "") -> str:
    """'Torch-Pruning could not ... <model>: <error> in layer <name> (<type>)' with the innermost module
    of ``model`` that was running when ``exc`` was raised, when there is one."""
    owners = {id(m): (n, m) for n, m in model.named_modules()}
    where = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in owners and owners[id(owner)][1] is owner:
            where = owners[id(owner)]
        tb = tb.tb_next
    detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:240]
    message = f"Torch-Pruning could not {doing} {type(model).__name__}: {type(exc).__name__}: {detail}"
    if where is not None and where[0]:
        message += f" (in layer {where[0]}, a {type(where[1]).__name__})"
    elif "grad_fn" in str(exc) or "NoneType" in str(exc):
        message += (" (its output seems to have no autograd history: a forward that detaches, runs under "
                    "no_grad or returns no tensor cannot be traced)")
    return message + (f". {advice}" if advice else ".")
