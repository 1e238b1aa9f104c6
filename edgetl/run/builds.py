"""Which target build of a run a command means: the one rule ``package``, ``compile`` and ``predict`` share.

As asked (``--precision``; it must be built), else the only precision built for the target, else the
target's default precision when that one is built; anything else is a one-line error naming the choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import ConfigError, TargetError
from .keys import StageKey, StageKind, is_done
from .manifest import Manifest


def built(manifest: Manifest, *, target: str | None = None, precision: str | None = None,
          accept: Callable[[str | None], bool] = is_done) -> list[StageKey]:
    """The target builds recorded in ``manifest`` whose status ``accept`` takes (by default: done), in order."""
    return [key for key in manifest.keys()
            if key.kind is StageKind.BUILD and target in (None, key.target) and precision in (None, key.precision)
            and accept(manifest.record(key).status)]


def choose_build(manifest: Manifest, target: str | None, precision: str | None,
                 candidates: Iterable[StageKey] | None = None, *, what: str = "build") -> StageKey:
    """The one build of ``candidates`` (default: every done build) that ``target``/``precision`` mean."""
    keys = list(built(manifest) if candidates is None else candidates)
    run = manifest.run_dir
    matching = [k for k in keys if target in (None, k.target)]
    export = f"`edgetl export {run} --target {target or 'TARGET'}"
    if not matching:
        raise TargetError(f"{run} has no {target + ' ' if target else ''}{what}: run {export}` first")
    targets = sorted({k.target or "" for k in matching})
    if len(targets) > 1:
        raise ConfigError(f"{run} has {what}s for {', '.join(targets)}: choose one with --target")
    target = targets[0]
    precisions = [k.precision or "" for k in matching]
    export = f"`edgetl export {run} --target {target}"
    if precision is not None:
        if precision not in precisions:
            raise TargetError(f"{run} has no {target} {precision} {what} (built: {', '.join(precisions)}): run "
                              f"{export} --precision {precision}` first")
        return StageKey.build(target, precision)
    if len(precisions) == 1:
        return StageKey.build(target, precisions[0])
    from ..profiles import load_target

    default = load_target(target).default_precision
    if default in precisions:
        return StageKey.build(target, default)
    raise ConfigError(f"{run} has {target} {what}s in {', '.join(sorted(precisions))}: choose one with --precision")
