"""Batched random colour augmentation of normalised RGB frames (white balance, saturation).

Endoscopes and video processors of other hospitals render the same tissue with another white
balance and saturation. The frames reach training z-scored per channel, so each effect
un-normalises to 0-255 pixels with the plan's channel ``mean``/``std``, changes the colour
there, clips to 0-255 as a camera's 8-bit output would, and normalises back. Labels are
never touched.
"""

from __future__ import annotations

import dataclasses

import torch

from medlens.augment.spatial import check_probability, check_range, uniform
from medlens.errors import MedlensError

#: ITU-R BT.601 luma weights of R, G, B (channel order of medlens RGB images)
LUMA_RGB = (0.299, 0.587, 0.114)


@dataclasses.dataclass(kw_only=True)
class ColourAugment:
    """Random per-channel gain (white balance) and saturation of ``[B, 3, *spatial]`` frames.

    Args:
        mean / std: the per-channel normalisation of the frames, in 0-255 pixel units (the
            plan's ``rgb`` normalisation); ``[0, 0, 0]`` / ``[1, 1, 1]`` for raw pixels.
        gain_prob / gain: probability and range of an independent factor per channel.
        saturation_prob / saturation: probability and range of the factor that scales each
            pixel's distance from its grey (luma) value; 0 gives grey, 1 leaves it.

    Example:
        >>> augment = ColourAugment(mean=[0, 0, 0], std=[1, 1, 1], saturation_prob=1.0,
        ...     saturation=(0.0, 0.0), gain_prob=0.0)
        >>> frames = torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> augment(frames, generator=torch.Generator().manual_seed(0))[0].flatten()
        tensor([76.2450, 76.2450, 76.2450])
    """

    mean: list[float]
    std: list[float]
    gain_prob: float = 0.3
    gain: tuple[float, float] = (0.85, 1.15)
    saturation_prob: float = 0.3
    saturation: tuple[float, float] = (0.6, 1.3)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise MedlensError(
                f"colour augmentation needs 3 channel means and positive stds, got "
                f"{self.mean} / {self.std}"
            )
        check_probability(self.gain_prob, "gain_prob")
        check_probability(self.saturation_prob, "saturation_prob")
        check_range(self.gain, "gain", low=0.0)
        check_range(self.saturation, "saturation", low=0.0)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim < 3 or images.shape[1] != 3:
            raise MedlensError(
                f"colour augmentation needs RGB frames [B, 3, ...], got {tuple(images.shape)}"
            )
        batch = images.shape[0]
        shape = (1, 3) + (1,) * (images.ndim - 2)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(shape)
        pixels = images * std + mean

        gain_on = torch.rand(batch, generator=generator) < self.gain_prob
        gains = uniform(*self.gain, (batch, 3), generator)
        gains = torch.where(gain_on[:, None], gains, torch.ones_like(gains))
        pixels = pixels * gains.to(pixels).view(batch, 3, *shape[2:])

        saturation_on = torch.rand(batch, generator=generator) < self.saturation_prob
        factors = uniform(*self.saturation, (batch,), generator)
        factors = torch.where(saturation_on, factors, torch.ones_like(factors))
        luma = torch.tensor(LUMA_RGB, device=images.device, dtype=images.dtype).view(shape)
        grey = (pixels * luma).sum(dim=1, keepdim=True)
        factors = factors.to(pixels).view(batch, 1, *shape[2:])
        pixels = grey + factors * (pixels - grey)
        return (pixels.clamp(0.0, 255.0) - mean) / std, labels
