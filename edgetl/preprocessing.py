"""The preprocessing a model expects, carried from the backbone to the manifest to the bundle.

A deployed model fed differently normalised pixels is the most common silent accuracy loss in
this field, so the spec is explicit about every step and every consumer builds its transforms
from it rather than retyping numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import ConfigError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class PreprocessSpec:
    """Eval-time pipeline: resize shorter side -> center crop -> scale to [0,1] -> normalise."""

    input_size: int = 224
    """Side of the square tensor the network receives."""
    resize_size: int = 256
    """Shorter image side after resizing, before the center crop."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean subtracted after scaling pixels to [0, 1]."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation divided after subtracting the mean."""
    interpolation: str = "bilinear"
    """Resampling filter for the resize: nearest, bilinear or bicubic."""
    channel_order: str = "RGB"
    """Channel order of the input tensor."""
    layout: str = "NCHW"
    """Tensor layout the exported model takes."""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if self.input_size < 8 or self.resize_size < self.input_size:
            raise ConfigError(f"need 8 <= input_size <= resize_size, got {self.input_size} and {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    @classmethod
    def from_crop_pct(cls, input_size: int, crop_pct: float, **kwargs: Any) -> PreprocessSpec:
        return cls(input_size=input_size, resize_size=int(math.floor(input_size / crop_pct)), **kwargs)

    def with_input_size(self, size: int) -> PreprocessSpec:
        """The same pipeline at another resolution, keeping the crop ratio."""
        return replace(self, input_size=size, resize_size=max(size, round(size / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["crop_pct"] = round(self.crop_pct, 4)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)

    # -- torchvision transforms ------------------------------------------------------------
    def eval_transform(self):  # -> torchvision.transforms.Compose
        from torchvision import transforms as T

        return T.Compose([
            T.Resize(self.resize_size, interpolation=_tv_interp(self.interpolation)),
            T.CenterCrop(self.input_size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def train_transform(self, augment: bool = True):
        """Standard transfer-learning augmentation: random resized crop, flip, light colour jitter."""
        if not augment:
            return self.eval_transform()
        from torchvision import transforms as T

        return T.Compose([
            T.RandomResizedCrop(self.input_size, scale=(0.35, 1.0), interpolation=_tv_interp(self.interpolation)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])


def _tv_interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)
