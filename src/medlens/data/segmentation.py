"""Segmentation data sets on disk: discovery, loading and the data fingerprint.

Two layouts are understood:

* MSD / nnU-Net style: ``DATA/imagesTr/CASE.nii.gz`` + ``DATA/labelsTr/CASE.nii.gz`` (an
  optional ``dataset.json`` names the labels and the modality). Image file names may carry
  nnU-Net's channel suffix ``_0000``.
* 2D pairs: ``DATA/images/NAME.jpg`` + ``DATA/masks/NAME.png|jpg`` (masks of 8-bit files are
  thresholded at 128 because JPEG compression blurs the values; Kvasir-SEG ships JPEG masks).

The fingerprint (:class:`Fingerprint`) holds what a plan needs: spacings, sizes, intensity
statistics inside the foreground, the classes present, and how often each class forms one
connected component (for largest-component post-processing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.image import Image

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif")


@dataclasses.dataclass(frozen=True)
class CasePaths:
    """One training case: an image file and its label file, named ``case_id``."""

    case_id: str
    image: Path
    label: Path


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)
    )


def dataset_layout(root: str | Path) -> str:
    """``"msd"`` for imagesTr/labelsTr, ``"pairs"`` for images/masks; error otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise MedlensError("training data folder does not exist", path=root)
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "msd"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "pairs"
    raise MedlensError(
        "not a segmentation data folder",
        path=root,
        hint="expected imagesTr/ + labelsTr/ (MSD layout) or images/ + masks/ (2D pairs)",
    )


def find_cases(root: str | Path) -> list[CasePaths]:
    """All (image, label) pairs of a data folder, sorted by case id."""
    root = Path(root)
    layout = dataset_layout(root)
    image_dir, label_dir = (
        (root / "imagesTr", root / "labelsTr")
        if layout == "msd"
        else (root / "images", root / "masks")
    )
    labels = {_strip_suffix(p.name): p for p in _files(label_dir)}
    cases: list[CasePaths] = []
    missing: list[str] = []
    for image in _files(image_dir):
        if image.name.startswith("."):
            continue
        case_id = _strip_suffix(image.name)
        base = case_id[:-5] if case_id.endswith("_0000") else case_id
        label = labels.get(base, labels.get(case_id))
        if label is None:
            missing.append(image.name)
            continue
        cases.append(CasePaths(base, image, label))
    if missing:
        raise MedlensError(
            f"{len(missing)} image(s) have no label file, e.g. {missing[0]}",
            path=label_dir,
            hint="every training image needs a label with the same name",
        )
    if not cases:
        raise MedlensError("no training cases found", path=image_dir)
    return cases


def read_dataset_json(root: str | Path) -> dict[str, Any]:
    """``dataset.json`` of an MSD folder, or ``{}``."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MedlensError(f"invalid dataset.json ({error})", path=path) from None


def dataset_label_names(root: str | Path) -> dict[int, str] | None:
    """Label names from ``dataset.json`` (``{"labels": {"0": "background", ...}}``), if any."""
    labels = read_dataset_json(root).get("labels")
    if not isinstance(labels, dict):
        return None
    names: dict[int, str] = {}
    for key, value in labels.items():
        # nnU-Net v2 writes {"name": value}, MSD writes {"value": "name"}
        if str(key).isdigit():
            names[int(key)] = str(value)
        elif isinstance(value, int):
            names[int(value)] = str(key)
    return names or None


def read_case_image(path: Path) -> Image:
    from medlens.io import read_image

    return read_image(path, warn_nan=False)


#: image formats whose files are masks drawn as pictures (8 or 16 bit)
RASTER_FORMATS = ("jpg", "jpeg", "png", "tif", "tiff", "bmp")


def raster_mask_labels(array: np.ndarray, *, lossy: bool, path: Path) -> np.ndarray:
    """Class indices ``(I, J, K)`` of a mask saved as a picture ``(C, I, J, K)``.

    A colour mask counts where any channel is set. JPEG (``lossy``) blurs a 0/255 mask's
    edges, so it is thresholded at 128. A lossless mask without the value 255 holds class
    indices as they are (0/1, or 0..N as in nnU-Net's 2D PNG labels); a 0/255 mask is binary,
    also with a few grey edge pixels (under 1%: a resized mask). Other grey levels are refused:
    they may code classes, and a threshold would merge them.

    >>> png = np.array([0, 1, 2]).reshape(1, 1, 3, 1)  # three classes
    >>> raster_mask_labels(png, lossy=False, path=Path("m.png")).ravel()
    array([0, 1, 2], dtype=uint8)
    >>> jpeg = np.array([0, 255, 250]).reshape(1, 1, 3, 1)  # a blurred binary mask
    >>> raster_mask_labels(jpeg, lossy=True, path=Path("m.jpg")).ravel()
    array([0, 1, 1], dtype=uint8)
    """
    grey = array.max(axis=0)
    top = int(grey.max())
    if lossy:
        return (grey > 127).astype(np.uint8) if top > 1 else grey.astype(np.uint8)
    if top != 255:
        if top > 255:
            raise MedlensError(
                f"mask values reach {top}: label maps hold class indices up to 255", path=path
            )
        return grey.astype(np.uint8)
    binary = np.isin(grey, (0, 255))
    if binary.mean() >= 0.99:
        return (grey > 127).astype(np.uint8)
    levels = ", ".join(str(v) for v in np.unique(grey[~binary])[:4])
    raise MedlensError(
        f"mask holds grey levels besides 0 and 255 (e.g. {levels}) in "
        f"{1 - binary.mean():.0%} of its pixels",
        path=path,
        hint="save a binary mask as 0/255, or classes as indices 0..N (nnU-Net's 2D labels)",
    )


def read_case_label(path: Path) -> np.ndarray:
    """Integer label array ``(I, J, K)``; 8-bit raster masks thresholded at 128."""
    from medlens.io import read_image

    image = read_image(path, warn_nan=False)
    array = image.numpy()
    image_format = image.metadata.get("format")
    if image_format in RASTER_FORMATS:
        return raster_mask_labels(array, lossy=image_format in ("jpg", "jpeg"), path=path)
    if array.shape[0] != 1:
        raise MedlensError(f"label file has {array.shape[0]} channels, expected 1", path=path)
    label = array[0]
    if label.dtype.kind == "f":
        rounded = np.rint(label)
        if not np.allclose(rounded, label, atol=1e-3):
            raise MedlensError("label file holds non-integer values", path=path)
        label = rounded
    if label.min() < 0 or label.max() > 255:
        raise MedlensError(f"label values {label.min()}..{label.max()} out of 0..255", path=path)
    return label.astype(np.uint8)


def read_case_pair(case: CasePaths) -> tuple[Image, np.ndarray]:
    """A case's image and integer label, refused unless the label is on the image's grid."""
    image = read_case_image(case.image)
    label = read_case_label(case.label)
    if label.shape != image.spatial_shape:
        raise MedlensError(
            f"label shape {label.shape} differs from image shape {image.spatial_shape}",
            path=case.label,
            hint="draw the label on its image's grid (same size in every axis)",
        )
    return image, label


@dataclasses.dataclass
class Fingerprint:
    """What the data looks like, in numbers a plan can use.

    Spacing in mm and sizes in voxels along (i, j, k); intensity statistics are per channel
    over foreground voxels (all voxels for 2D RGB).
    """

    num_cases: int
    dims: int
    num_channels: int
    modality: str
    spacings_mm: list[list[float]]
    shapes: list[list[int]]
    classes: list[int]
    foreground_mean: list[float]
    foreground_std: list[float]
    foreground_p005: list[float]
    foreground_p995: list[float]
    single_component_fraction: dict[int, float]

    @property
    def median_spacing_mm(self) -> list[float]:
        return np.median(np.array(self.spacings_mm), axis=0).tolist()

    @property
    def median_shape(self) -> list[int]:
        return np.median(np.array(self.shapes), axis=0).astype(int).tolist()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["single_component_fraction"] = {
            str(k): v for k, v in self.single_component_fraction.items()
        }
        data["median_spacing_mm"] = self.median_spacing_mm
        data["median_shape"] = self.median_shape
        return data


def compute_fingerprint(
    images: list[Image], labels: list[np.ndarray], *, modality: str = ""
) -> Fingerprint:
    """Fingerprint of loaded cases (``labels`` are ``(I, J, K)`` integer arrays)."""
    from scipy import ndimage

    dims = 2 if all(image.is_2d for image in images) else 3
    channels = {image.num_channels for image in images}
    if len(channels) != 1:
        raise MedlensError(f"training images have different channel counts {sorted(channels)}")
    num_channels = channels.pop()
    rng = np.random.default_rng(0)
    samples: list[list[np.ndarray]] = [[] for _ in range(num_channels)]
    classes: set[int] = set()
    single: dict[int, list[bool]] = {}
    for image, label in zip(images, labels, strict=True):
        values = image.numpy()
        foreground = label > 0
        if dims == 2 or not foreground.any():
            foreground = np.ones_like(label, dtype=bool)
        for channel in range(num_channels):
            voxels = values[channel][foreground].astype(np.float32)
            take = min(voxels.size, 10_000)
            samples[channel].append(rng.choice(voxels, take, replace=False))
        present = np.unique(label).tolist()
        classes.update(present)
        for value in present:
            if value == 0:
                continue
            # full (8/26) connectivity: a diagonal touch is still one structure
            structure = ndimage.generate_binary_structure(label.ndim, label.ndim)
            _, count = ndimage.label(label == value, structure=structure)
            single.setdefault(int(value), []).append(count == 1)
    stacked = [np.concatenate(s) for s in samples]
    return Fingerprint(
        num_cases=len(images),
        dims=dims,
        num_channels=num_channels,
        modality=modality or images[0].modality,
        spacings_mm=[image.spacing_mm.tolist() for image in images],
        shapes=[list(image.spatial_shape) for image in images],
        classes=sorted(int(c) for c in classes),
        foreground_mean=[float(s.mean()) for s in stacked],
        foreground_std=[float(s.std()) for s in stacked],
        foreground_p005=[float(np.percentile(s, 0.5)) for s in stacked],
        foreground_p995=[float(np.percentile(s, 99.5)) for s in stacked],
        single_component_fraction={k: float(np.mean(v)) for k, v in single.items()},
    )


def check_label_classes(label: np.ndarray, allowed: list[int], path: Path) -> None:
    """Refuse a label file with classes the plan does not know."""
    present = np.unique(label).tolist()
    extra = sorted(set(present) - set(allowed))
    if extra:
        raise MedlensError(
            f"label file has classes {extra} that are not in the plan (plan classes {allowed})",
            path=path,
            hint="fix the label file or re-plan with labels that include these classes",
        )
