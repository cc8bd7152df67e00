"""Batched random augmentation for training, on CPU or CUDA torch tensors.

* :class:`SpatialAugment` — flips, rot90, rotation/scale/shear/shift and elastic
  deformation fused into ONE ``grid_sample`` per batch (images bilinear, labels nearest).
* :class:`IntensityAugment` — gamma, contrast, bias field, blur, low resolution, noise.
* :class:`ColourAugment` — RGB frames: white balance (per-channel gain), saturation.
* :class:`Augment` — both, ``images, labels = augment(images, labels, generator=g)``.
* :class:`BoxAugment2D` — detection: flips, zoom, shift with exactly transformed boxes.
* :mod:`medlens.augment.segmentation_batch` — ``medlens train seg``'s built-in recipe.

Layout: images ``[B, C, *spatial]`` float, labels ``[B, 1, *spatial]`` (integer stays
integer). Pass a seeded ``torch.Generator`` (CPU) for reproducible results.
"""

from medlens.augment.boxes import BoxAugment2D
from medlens.augment.colour import ColourAugment
from medlens.augment.compose import Augment
from medlens.augment.intensity import IntensityAugment
from medlens.augment.spatial import SpatialAugment

__all__ = ["Augment", "BoxAugment2D", "ColourAugment", "IntensityAugment", "SpatialAugment"]
