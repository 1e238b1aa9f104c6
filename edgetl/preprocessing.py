"""The preprocessing a model expects, carried from the backbone to the manifest to the bundle.

A deployed model fed differently normalised pixels is the most common silent accuracy loss in
this field, so the spec is explicit about every step and every consumer builds its transforms
from it rather than retyping numbers. Evaluation, calibration and the torch-free runtime use
:meth:`PreprocessSpec.apply` (PIL + numpy, equal to the torchvision eval transform); torchvision is
kept for training (augmentation, validation loaders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3}
"""PIL resampling filter per interpolation (Image.NEAREST, BILINEAR, BICUBIC), as torchvision maps them."""


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

    # -- PIL + numpy (no torch) ------------------------------------------------------------
    def apply(self, image: Image.Image) -> np.ndarray:
        """The eval pipeline without torch: float32 CHW, equal to ``eval_transform()(image)``.

        Resize the shorter side with PIL's own filter (what torchvision does on PIL images), center crop,
        scale to [0, 1], normalise. A non-RGB image is converted as :func:`to_rgb` does.
        """
        return self.normalize(self.crop(image)[None])[0]

    def crop(self, image: Image.Image) -> np.ndarray:
        """The resized, center-cropped RGB pixels (uint8 HWC): :meth:`apply` before scaling."""
        import numpy as np

        if image.mode != "RGB":
            image = to_rgb(image)
        size = resized_size(image.width, image.height, self.resize_size)
        if size != image.size:
            image = image.resize(size, PIL_FILTERS[self.interpolation])
        return center_crop(np.asarray(image), self.input_size)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC crops -> float32 NCHW scaled to [0, 1] and normalised (ToTensor, then Normalize: the
        same float32 operations in the same order, so the result equals torchvision's bit for bit)."""
        import numpy as np

        nchw = pixels.transpose(0, 3, 1, 2).astype(np.float32)
        nchw /= np.float32(255)
        nchw -= np.asarray(self.mean, np.float32)[:, None, None]
        nchw /= np.asarray(self.std, np.float32)[:, None, None]
        return nchw

    # -- torchvision transforms ------------------------------------------------------------
    def eval_transform(self):  # -> torchvision.transforms.Compose
        """The eval pipeline as torchvision transforms (training-time validation loaders); see :meth:`apply`."""
        from torchvision import transforms as T

        return T.Compose([
            T.Resize(self.resize_size, interpolation=_tv_interp(self.interpolation)),
            T.CenterCrop(self.input_size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def train_transform(self, augment: bool = True, strength: float = 1.0):
        """Standard transfer-learning augmentation: random resized crop, flip, light colour jitter.

        ``strength`` scales it: the smallest crop keeps ``1 - 0.65 * strength`` of the area (at least 8%,
        torchvision's default), the jitter is ``0.2 * strength``; 1 is the default, 0 keeps flips only."""
        if not augment:
            return self.eval_transform()
        from torchvision import transforms as T

        smallest = max(0.08, 1.0 - 0.65 * strength)
        jitter = 0.2 * strength
        return T.Compose([
            T.RandomResizedCrop(self.input_size, scale=(smallest, 1.0), interpolation=_tv_interp(self.interpolation)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(jitter, jitter, jitter),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])


def _tv_interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(shorter)``: the longer side is scaled and truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)
    return (shorter, new_long) if width <= height else (new_long, shorter)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``CenterCrop(size)`` of an HWC array: zero padding first where the image is smaller,
    then the offsets ``int(round((side - size) / 2))`` (Python's round: halves go to even)."""
    import numpy as np

    height, width = pixels.shape[:2]
    if size > height or size > width:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        pad = ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)) + ((0, 0),) * (pixels.ndim - 2)
        pixels = np.pad(pixels, pad)
        height, width = pixels.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return pixels[top:top + size, left:left + size]


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """A 16-bit ("I;16*", or "I" holding 0..65535) or float ("F") grayscale image scaled to "L"."""
    import numpy as np
    from PIL import Image

    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode == "F":
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    elif image.mode != "I" or (values.size and values.min() >= 0 and values.max() <= 65535):
        values = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image: transparency composited on white, 16-bit and float grayscale scaled (not clipped)."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _to_8bit_gray(image).convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
