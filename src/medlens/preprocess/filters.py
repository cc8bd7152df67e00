"""Denoising filters: Gaussian, median, bilateral, non-local means, curvature diffusion.

Sizes are in millimetres where the filter is physical (Gaussian, bilateral) and in voxels
where it is a window (median). Output float32 (median keeps the dtype); labels unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medlens.image import Image
from medlens.preprocess import torch_ops
from medlens.preprocess.base import Transform, check_positive, float_array, register
from medlens.preprocess.geometry import from_sitk, to_sitk


def _sigma_voxels(image: Image, sigma_mm: float) -> tuple[float, float, float]:
    return tuple(
        0.0 if size == 1 else sigma_mm / spacing
        for size, spacing in zip(image.spatial_shape, image.spacing_mm, strict=True)
    )  # type: ignore[return-value]


def _squeeze_2d(data: np.ndarray) -> np.ndarray:
    """(I, J, 1) -> (I, J) so 2D images are filtered in 2D."""
    return data[..., 0] if data.shape[-1] == 1 else data


@register("gaussian")
@dataclasses.dataclass(kw_only=True)
class GaussianFilter(Transform):
    """Gaussian smoothing with ``sigma_mm`` (mm, > 0), kernel truncated at 4 sigma.

    Numpy: ``scipy.ndimage.gaussian_filter`` (replicate borders); tensors:
    :func:`~medlens.preprocess.torch_ops.gaussian_filter` (agree to ~1e-5).
    """

    sigma_mm: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.sigma_mm, "gaussian sigma_mm")

    def apply(self, image: Image) -> Image:
        sigma = _sigma_voxels(image, self.sigma_mm)
        if isinstance(image.array, torch.Tensor):
            return image.with_array(torch_ops.gaussian_filter(image.array, sigma))
        values = float_array(image)
        out = np.stack(
            [ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=4.0) for c in values]
        )
        return image.with_array(out.astype(np.float32, copy=False))


@register("median")
@dataclasses.dataclass(kw_only=True)
class MedianFilter(Transform):
    """Median over a ``(2r+1)`` voxel box (r = ``radius_voxels``; 2D images stay 2D)."""

    radius_voxels: int = 1

    def __post_init__(self) -> None:
        check_positive(self.radius_voxels, "median radius_voxels")

    def apply(self, image: Image) -> Image:
        radius = tuple(0 if s == 1 else int(self.radius_voxels) for s in image.spatial_shape)
        if isinstance(image.array, torch.Tensor):
            return image.with_array(torch_ops.median_filter(image.array, radius))
        size = tuple(2 * r + 1 for r in radius)
        out = np.stack([ndimage.median_filter(c, size=size, mode="nearest") for c in image.numpy()])
        return image.with_array(out)


@register("bilateral")
@dataclasses.dataclass(kw_only=True)
class BilateralFilter(Transform):
    """Edge-preserving bilateral filter (SimpleITK): spatial sigma in mm, range sigma in
    image units."""

    sigma_mm: float = 1.0
    range_sigma: float = 50.0

    def __post_init__(self) -> None:
        check_positive(self.sigma_mm, "bilateral sigma_mm")
        check_positive(self.range_sigma, "bilateral range_sigma")

    def apply(self, image: Image) -> Image:
        channels = []
        for data in float_array(image):
            source = to_sitk(data.astype(np.float32), image)
            result = sitk.Bilateral(
                source, domainSigma=float(self.sigma_mm), rangeSigma=float(self.range_sigma)
            )
            channels.append(np.array(from_sitk(result)))
        return image.with_array(np.stack(channels))


def noise_sigma(data: np.ndarray) -> float:
    """Robust noise std: MAD of neighbour differences along the first axis / sqrt(2).

    (``skimage.restoration.estimate_sigma`` would need PyWavelets; this estimator is the
    usual difference-based one and is exact for white Gaussian noise on flat regions.)
    """
    differences = np.diff(data, axis=0).ravel()
    mad = np.median(np.abs(differences - np.median(differences)))
    return float(1.4826 * mad / np.sqrt(2.0)) or 1e-6


@register("non_local_means")
@dataclasses.dataclass(kw_only=True)
class NonLocalMeans(Transform):
    """Non-local means denoising (scikit-image, fast mode, 2D or 3D).

    Args:
        strength: filter strength ``h`` as a multiple of the noise std estimated by
            :func:`noise_sigma`.
        patch_size / patch_distance: voxels.
    """

    strength: float = 0.8
    patch_size: int = 3
    patch_distance: int = 3

    def __post_init__(self) -> None:
        check_positive(self.strength, "non_local_means strength")
        check_positive(self.patch_size, "patch_size")
        check_positive(self.patch_distance, "patch_distance")

    def apply(self, image: Image) -> Image:
        from skimage.restoration import denoise_nl_means

        channels = []
        for data in float_array(image):
            data2 = _squeeze_2d(data.astype(np.float32))
            sigma = noise_sigma(data2)
            out = denoise_nl_means(
                data2,
                h=self.strength * sigma,
                sigma=sigma,
                patch_size=self.patch_size,
                patch_distance=self.patch_distance,
                fast_mode=True,
            )
            channels.append(out.reshape(data.shape).astype(np.float32))
        return image.with_array(np.stack(channels))


@register("curvature_diffusion")
@dataclasses.dataclass(kw_only=True)
class CurvatureAnisotropicDiffusion(Transform):
    """Curvature anisotropic diffusion (SimpleITK): smooths regions, keeps edges.

    Args:
        iterations: diffusion steps (more = smoother).
        conductance: edge sensitivity (lower keeps more edges).
        time_step: None = the stable maximum, ``min(spacing) / 2^(dims+1)``.
    """

    iterations: int = 5
    conductance: float = 1.0
    time_step: float | None = None

    def __post_init__(self) -> None:
        check_positive(self.iterations, "iterations")
        check_positive(self.conductance, "conductance")
        if self.time_step is not None:
            check_positive(self.time_step, "time_step")

    def apply(self, image: Image) -> Image:
        dims = 2 if image.is_2d else 3
        step = self.time_step or float(image.spacing_mm[:dims].min()) / 2 ** (dims + 1)
        channels = []
        for data in float_array(image):
            source = to_sitk(data.astype(np.float32), image)
            if dims == 2:
                source = source[:, :, 0]
            result = sitk.CurvatureAnisotropicDiffusion(
                source,
                timeStep=step,
                conductanceParameter=float(self.conductance),
                numberOfIterations=int(self.iterations),
            )
            channels.append(np.array(from_sitk(result)).reshape(data.shape))
        return image.with_array(np.stack(channels))
