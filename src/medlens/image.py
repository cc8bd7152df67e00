"""The one image type of medlens: a voxel array with its physical geometry.

Conventions, stated once for the whole project:

* The array is channels-first and always 4D: ``(C, I, J, K)``. A 3D scan has ``C == 1``;
  an RGB frame has ``C == 3`` and ``K == 1`` (2D images are 3D images one voxel thick).
* Voxel index ``(i, j, k)`` follows ITK and nibabel: ``i`` runs along image columns
  (DICOM's row direction, "x"), ``j`` along rows ("y"), ``k`` across slices.
* World coordinates are millimetres in **LPS** (DICOM and ITK's patient coordinates:
  +x to the patient's Left, +y Posterior, +z Superior). The position of a voxel is
  ``origin_mm + direction @ (spacing_mm * [i, j, k])``. Columns of ``direction`` are unit
  vectors of the i, j and k axes in LPS.
* Label maps are the same type with an integer dtype and ``labels`` naming each class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError

ArrayLike = np.ndarray | torch.Tensor


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.shape != (3,):
        raise MedlensError(f"{name} must have 3 values, got {vector.tolist()}")
    return vector


@dataclasses.dataclass(eq=False)
class Image:
    """A voxel array with spacing, origin and direction in LPS millimetres.

    Args:
        array: ``(C, I, J, K)`` numpy array or torch tensor (kept as given, never copied).
        spacing_mm: voxel size along i, j, k in mm.
        origin_mm: LPS position of voxel (0, 0, 0) in mm.
        direction: 3x3 matrix whose columns are the i, j, k axes in LPS.
        modality: e.g. ``"CT"``, ``"MR"``, ``"US"``, ``"ENDOSCOPY"``; empty if unknown.
        labels: for label maps, ``{value: name}`` of the classes (0 is background).
        metadata: source information (format, path, DICOM UIDs, ...). Patient identity,
            when read, lives under ``metadata["patient"]`` and is never printed by default.

    Example:
        >>> import numpy as np
        >>> image = Image(np.zeros((1, 4, 5, 6), np.float32), spacing_mm=(1, 1, 2.5))
        >>> image.spatial_shape
        (4, 5, 6)
        >>> image.index_to_world((1, 0, 2)).tolist()
        [1.0, 0.0, 5.0]
    """

    array: ArrayLike
    spacing_mm: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3))
    origin_mm: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    modality: str = ""
    labels: dict[int, str] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray | torch.Tensor):
            self.array = np.asarray(self.array)
        if self.array.ndim != 4:
            raise MedlensError(
                f"image array must be 4D (channels, i, j, k), got shape {tuple(self.array.shape)}"
            )
        self.spacing_mm = _as_vector(self.spacing_mm, "spacing_mm")
        if np.any(self.spacing_mm <= 0) or not np.all(np.isfinite(self.spacing_mm)):
            raise MedlensError(f"spacing_mm must be positive, got {self.spacing_mm.tolist()}")
        self.origin_mm = _as_vector(self.origin_mm, "origin_mm")
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.labels is not None:
            self.labels = {int(value): str(name) for value, name in self.labels.items()}

    # ----------------------------------------------------------------- shape and type
    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        """True for a single-slice image such as a photo or an X-ray."""
        return self.spatial_shape[2] == 1

    @property
    def dtype(self) -> Any:
        return self.array.dtype

    @property
    def is_label(self) -> bool:
        """Integer arrays with named labels are label maps."""
        if self.labels is not None:
            return True
        if isinstance(self.array, torch.Tensor):
            return not (self.array.is_floating_point() or self.array.is_complex())
        return False

    def numpy(self) -> np.ndarray:
        """The array as numpy, sharing memory with a CPU tensor."""
        if isinstance(self.array, torch.Tensor):
            return self.array.detach().cpu().numpy()
        return self.array

    def tensor(self) -> torch.Tensor:
        """The array as a torch tensor, sharing memory with the numpy array."""
        if isinstance(self.array, torch.Tensor):
            return self.array
        if any(stride < 0 for stride in self.array.strides):
            return torch.from_numpy(np.ascontiguousarray(self.array))
        return torch.from_numpy(self.array)

    # ----------------------------------------------------------------- geometry
    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-index to LPS-mm matrix."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing_mm[np.newaxis, :]
        affine[:3, 3] = self.origin_mm
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-index to RAS-mm matrix, as nibabel and NIfTI use."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    def index_to_world(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        """LPS mm position(s) of voxel index(es); accepts ``(3,)`` or ``(N, 3)``."""
        index = np.asarray(index, dtype=np.float64)
        return index @ (self.direction * self.spacing_mm).T + self.origin_mm

    def world_to_index(self, point_mm: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous voxel index(es) of LPS mm position(s); inverse of index_to_world."""
        point_mm = np.asarray(point_mm, dtype=np.float64)
        inverse = np.linalg.inv(self.direction * self.spacing_mm)
        return (point_mm - self.origin_mm) @ inverse.T

    def same_grid(self, other: Image, *, tolerance_mm: float = 1e-3) -> bool:
        """True if both images have the same shape and voxel positions (within tolerance)."""
        if self.spatial_shape != other.spatial_shape:
            return False
        corners = np.array(
            [[0, 0, 0], [s - 1 for s in self.spatial_shape]], dtype=np.float64
        ).reshape(2, 3)
        return bool(
            np.abs(self.index_to_world(corners) - other.index_to_world(corners)).max()
            <= tolerance_mm
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def orientation_code(self) -> str:
        """Three letters naming where each axis points, ITK style (e.g. ``"LPS"``)."""
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = []
        for axis in range(3):
            column = self.direction[:, axis]
            world_axis = int(np.argmax(np.abs(column)))
            code.append(letters[world_axis][0 if column[world_axis] > 0 else 1])
        return "".join(code)

    # ----------------------------------------------------------------- construction
    def with_array(self, array: ArrayLike, **changes: Any) -> Image:
        """A new image with another array (and optionally other fields), same metadata."""
        fields = {
            "spacing_mm": self.spacing_mm.copy(),
            "origin_mm": self.origin_mm.copy(),
            "direction": self.direction.copy(),
            "modality": self.modality,
            "labels": None if self.labels is None else dict(self.labels),
            "metadata": dict(self.metadata),
        }
        fields.update(changes)
        return Image(array, **fields)

    @classmethod
    def from_spatial(
        cls, array: ArrayLike, *, reference: Image | None = None, **fields: Any
    ) -> Image:
        """Build from a 3D ``(I, J, K)`` array, copying geometry from ``reference``."""
        array4d = array[None]
        if reference is not None:
            return reference.with_array(array4d, **fields)
        return cls(array4d, **fields)

    def require_3d_single_channel(
        self, *, source: str = "image", path: str | Path | None = None
    ) -> None:
        """Raise a clear error unless this is a single-channel volume.

        ``path`` names the offending file in the message (e.g. the 4D input).
        """
        if self.num_channels != 1:
            raise MedlensError(
                f"{source}: expected a single-channel 3D image, got {self.num_channels} "
                f"channels (a 4D image of shape {tuple(self.array.shape)}?)",
                path=path,
                hint="pick one channel first, e.g. `medlens convert IN OUT --channel 0`",
            )

    def summary(self) -> Mapping[str, Any]:
        """Format-independent facts about the image (no patient identity)."""
        values = self.numpy()
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        return {
            "shape": list(self.array.shape),
            "dtype": str(values.dtype),
            "spacing_mm": [round(float(v), 6) for v in self.spacing_mm],
            "origin_mm": [round(float(v), 6) for v in self.origin_mm],
            "direction": [[round(float(v), 6) for v in row] for row in self.direction],
            "orientation": self.orientation_code(),
            "modality": self.modality,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "nan_count": int(np.isnan(values).sum()) if values.dtype.kind == "f" else 0,
            "labels": self.labels,
        }
