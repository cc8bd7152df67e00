"""MRI bias-field (intensity inhomogeneity) correction with SimpleITK's N4."""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocess.base import Transform, float_array, register
from medlens.preprocess.geometry import from_sitk, to_sitk


@register("n4_bias_correction")
@dataclasses.dataclass(kw_only=True)
class N4BiasCorrection(Transform):
    """N4 bias-field correction (SimpleITK), fitted on a shrunk copy for speed.

    Args:
        shrink_factor: fit on an image shrunk by this integer factor (1 = full size).
        iterations: iterations per fitting level (one number per level).
        mask: ``"otsu"`` (fit inside an Otsu foreground mask) or ``"all"``.

    The image is divided by the full-resolution bias field; output float32, same units.
    """

    shrink_factor: int = 2
    iterations: tuple[int, ...] = (50, 50, 30)
    mask: str = "otsu"

    def __post_init__(self) -> None:
        if int(self.shrink_factor) < 1:
            raise MedlensError(f"shrink_factor must be >= 1, got {self.shrink_factor}")
        self.iterations = tuple(int(i) for i in self.iterations)
        if not self.iterations or min(self.iterations) < 1:
            raise MedlensError(f"iterations must be positive integers, got {self.iterations}")
        if self.mask not in ("otsu", "all"):
            raise MedlensError(f"mask must be 'otsu' or 'all', got {self.mask!r}")

    def apply(self, image: Image) -> Image:
        channels = []
        for data in float_array(image):
            source = to_sitk(data.astype(np.float32), image)
            if image.is_2d:  # N4 cannot fit along a one-voxel axis
                source = source[:, :, 0]
            if self.mask == "otsu":
                mask = sitk.OtsuThreshold(source, 0, 1, 200)
            else:
                mask = sitk.Image(source.GetSize(), sitk.sitkUInt8) + 1
                mask.CopyInformation(source)
            shrink = [int(self.shrink_factor) if s > 4 else 1 for s in source.GetSize()]
            small = sitk.Shrink(source, shrink)
            small_mask = sitk.Shrink(mask, shrink)
            corrector = sitk.N4BiasFieldCorrectionImageFilter()
            corrector.SetMaximumNumberOfIterations(list(self.iterations))
            corrector.Execute(small, small_mask)
            log_bias = corrector.GetLogBiasFieldAsImage(source)
            corrected = source / sitk.Exp(log_bias)
            channels.append(np.array(from_sitk(corrected), dtype=np.float32).reshape(data.shape))
        return image.with_array(np.stack(channels))
