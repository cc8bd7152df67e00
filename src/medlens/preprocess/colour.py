"""Colour (endoscopy, dermoscopy, photos): brightness/contrast, colour balance, specular
highlights.

Colour-balance and specular transforms need RGB (3 channels) and raise a clear error
otherwise. Values keep the input's scale (0..255 for 8-bit frames); output dtype is kept
for 8-bit input (rounded and clipped) and float32 otherwise.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from medlens.image import Image
from medlens.preprocess.base import (
    Transform,
    check_choice,
    check_percentiles,
    check_positive,
    register,
    require_colour,
)


def _value_max(values: np.ndarray) -> float:
    return 255.0 if values.dtype == np.uint8 else float(max(values.max(), 1e-6))


def _as_input_dtype(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def _pixels(image: Image) -> np.ndarray:
    """``(C, W, H, 1)`` -> ``(H, W, C)`` for OpenCV (a view)."""
    return image.numpy()[..., 0].transpose(2, 1, 0)


def _from_pixels(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.transpose(2, 1, 0))[..., None]


@register("brightness_contrast")
@dataclasses.dataclass(kw_only=True)
class BrightnessContrast(Transform):
    """``x -> (x - mean) * contrast + mean + brightness`` (any number of channels).

    Args:
        brightness: added offset, in image units (e.g. +20 on a 0..255 frame).
        contrast: factor around the image mean (> 0; 1 = unchanged).
    """

    brightness: float = 0.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.contrast, "contrast")

    def apply(self, image: Image) -> Image:
        values = image.numpy()
        data = values.astype(np.float32)
        out = (data - data.mean()) * self.contrast + data.mean() + self.brightness
        if values.dtype == np.uint8:
            return image.with_array(_as_input_dtype(out, values))
        return image.with_array(out.astype(np.float32))


@register("gray_world")
@dataclasses.dataclass(kw_only=True)
class GrayWorld(Transform):
    """Gray-world colour balance: scale R, G, B so their means are equal (RGB only)."""

    def apply(self, image: Image) -> Image:
        require_colour(image, self.name)
        values = image.numpy()
        data = values.astype(np.float32)
        means = data.reshape(3, -1).mean(axis=1)
        gains = means.mean() / np.maximum(means, 1e-6)
        out = np.clip(data * gains[:, None, None, None], 0, _value_max(values))
        return image.with_array(_as_input_dtype(out, values))


@register("white_patch")
@dataclasses.dataclass(kw_only=True)
class WhitePatch(Transform):
    """White-patch (max-RGB) balance: each channel's ``percentile`` becomes white (RGB only).

    Args:
        percentile: robust maximum per channel (e.g. 99 ignores specular spots).
    """

    percentile: float = 99.0

    def __post_init__(self) -> None:
        check_percentiles(0.0, self.percentile)

    def apply(self, image: Image) -> Image:
        require_colour(image, self.name)
        values = image.numpy()
        data = values.astype(np.float32)
        white = _value_max(values)
        bright = np.percentile(data.reshape(3, -1), self.percentile, axis=1)
        gains = white / np.maximum(bright, 1e-6)
        out = np.clip(data * gains[:, None, None, None], 0, white)
        return image.with_array(_as_input_dtype(out, values))


def specular_mask(
    image: Image, *, value_threshold: float = 0.9, saturation_max: float = 0.2, dilate_px: int = 2
) -> np.ndarray:
    """``(H, W)`` bool mask of specular highlights: very bright and nearly colourless.

    Brightness (HSV value) above ``value_threshold`` of the maximum and saturation below
    ``saturation_max``; dilated by ``dilate_px`` so the halo is inpainted too.
    """
    require_colour(image, "specular highlight detection")
    data = _pixels(image).astype(np.float32) / _value_max(image.numpy())
    value = data.max(axis=2)
    saturation = (value - data.min(axis=2)) / np.maximum(value, 1e-6)
    mask = (value >= value_threshold) & (saturation <= saturation_max)
    if dilate_px > 0 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1,) * 2)
        mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    return mask


@register("specular_inpaint")
@dataclasses.dataclass(kw_only=True)
class SpecularInpaint(Transform):
    """Detect specular highlights and fill them with ``cv2.inpaint`` (RGB 2D only).

    Args:
        value_threshold: brightness (fraction of max) above which a pixel may be specular.
        saturation_max: maximum HSV saturation of a specular pixel.
        dilate_px: mask dilation (pixels).
        radius_px: inpainting neighbourhood radius (pixels).
        method: ``"telea"`` or ``"navier_stokes"``.

    The fraction of pixels inpainted is stored in ``metadata["specular_fraction"]``.
    """

    value_threshold: float = 0.9
    saturation_max: float = 0.2
    dilate_px: int = 2
    radius_px: int = 5
    method: str = "telea"

    def __post_init__(self) -> None:
        check_positive(self.value_threshold, "value_threshold")
        check_positive(self.saturation_max, "saturation_max")
        check_positive(self.radius_px, "radius_px")
        check_choice(self.method, "method", ("telea", "navier_stokes"))

    def apply(self, image: Image) -> Image:
        require_colour(image, self.name)
        if not image.is_2d:
            from medlens.errors import MedlensError

            raise MedlensError(
                "specular_inpaint works on 2D frames only", path=image.metadata.get("path")
            )
        mask = specular_mask(
            image,
            value_threshold=self.value_threshold,
            saturation_max=self.saturation_max,
            dilate_px=self.dilate_px,
        )
        values = image.numpy()
        pixels = _pixels(image)
        if not mask.any():
            result = image.with_array(values.copy())
        else:
            scale = _value_max(values)
            as8 = np.clip(np.rint(pixels.astype(np.float32) / scale * 255), 0, 255).astype(np.uint8)
            flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
            filled = cv2.inpaint(
                np.ascontiguousarray(as8), mask.astype(np.uint8), self.radius_px, flag
            )
            out = pixels.astype(np.float32).copy()
            out[mask] = filled[mask].astype(np.float32) / 255 * scale
            result = image.with_array(_as_input_dtype(_from_pixels(out), values))
        result.metadata["specular_fraction"] = float(mask.mean())
        return result
