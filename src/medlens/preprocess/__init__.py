"""Deterministic preprocessing on :class:`~medlens.image.Image`, CPU (numpy, SimpleITK,
OpenCV, scikit-image) and torch (CPU/CUDA) for the heavy steps.

Each transform is a keyword-only dataclass: ``image = Resample(spacing_mm=1.0)(image)``.
Chains are :class:`Pipeline` objects saved to/loaded from YAML; presets ``ct``, ``mri``,
``endoscopy``. See :data:`REGISTRY` for the names usable in pipeline files.
"""

from medlens.preprocess.base import REGISTRY, Transform
from medlens.preprocess.bias import N4BiasCorrection
from medlens.preprocess.cleaning import (
    ClipPercentiles,
    RemoveBackground,
    RepairCorruptSlices,
    RepairNonFinite,
    slice_defects,
)
from medlens.preprocess.colour import (
    BrightnessContrast,
    GrayWorld,
    SpecularInpaint,
    WhitePatch,
    specular_mask,
)
from medlens.preprocess.enhance import CLAHE, Gamma, HistogramEqualize, UnsharpMask
from medlens.preprocess.filters import (
    BilateralFilter,
    CurvatureAnisotropicDiffusion,
    GaussianFilter,
    MedianFilter,
    NonLocalMeans,
)
from medlens.preprocess.geometry import CropForeground, PadCrop, Reorient, Resample
from medlens.preprocess.intensity import (
    CT_WINDOWS,
    CTWindow,
    HistogramMatch,
    PercentileScale,
    ZScore,
)
from medlens.preprocess.pipeline import PRESETS, Pipeline, build_transform, preset

__all__ = [
    "CLAHE",
    "CT_WINDOWS",
    "PRESETS",
    "REGISTRY",
    "BilateralFilter",
    "BrightnessContrast",
    "CTWindow",
    "ClipPercentiles",
    "CropForeground",
    "CurvatureAnisotropicDiffusion",
    "Gamma",
    "GaussianFilter",
    "GrayWorld",
    "HistogramEqualize",
    "HistogramMatch",
    "MedianFilter",
    "N4BiasCorrection",
    "NonLocalMeans",
    "PadCrop",
    "PercentileScale",
    "Pipeline",
    "RemoveBackground",
    "Reorient",
    "RepairCorruptSlices",
    "RepairNonFinite",
    "Resample",
    "SpecularInpaint",
    "Transform",
    "UnsharpMask",
    "WhitePatch",
    "ZScore",
    "build_transform",
    "preset",
    "slice_defects",
    "specular_mask",
]
