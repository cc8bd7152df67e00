"""Read and write images with their geometry: DICOM, NIfTI, NRRD/MHA/MHD, PNG/JPEG/TIFF, SEG.

``read_image`` and ``write_image`` pick the format from the path: a folder or a ``.dcm`` file
is DICOM, ``.nii``/``.nii.gz`` NIfTI, ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` SimpleITK, and
``.png``/``.jpg``/``.tif`` OpenCV. Files without a known suffix are sniffed for DICOM.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medlens.errors import MedlensError, MedlensWarning
from medlens.image import Image
from medlens.io.atomic import atomic_output, full_suffix
from medlens.io.dicom import is_dicom_file, list_series, read_dicom
from medlens.io.itk import read_itk, write_itk
from medlens.io.nifti import read_nifti, write_nifti
from medlens.io.raster import RASTER_SUFFIXES, read_raster, write_raster
from medlens.io.seg import read_dicom_seg, write_dicom_seg

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
WRITABLE_SUFFIXES = (
    NIFTI_SUFFIXES + ITK_SUFFIXES + (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
)
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES


def image_format(path: str | Path) -> str:
    """``"dicom"``, ``"nifti"``, ``"itk"`` or ``"raster"`` for a path (by suffix or content)."""
    path = Path(path)
    if not path.exists():
        raise MedlensError("no such file or folder", path=path, hint="check the path")
    if path.is_dir():
        return "dicom"
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_SUFFIXES:
        return "itk"
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in DICOM_SUFFIXES or is_dicom_file(path):
        return "dicom"
    raise MedlensError(
        f"unknown image format '{suffix or '(no suffix)'}'",
        path=path,
        hint="medlens reads DICOM, NIfTI (.nii, .nii.gz), NRRD, MHA/MHD, PNG, JPEG and TIFF",
    )


def read_image(
    path: str | Path,
    *,
    series_uid: str | None = None,
    resample_nonuniform: bool = False,
    warn_nan: bool = True,
) -> Image:
    """Read any supported image into an :class:`Image` with LPS geometry.

    Args:
        path: a file, or a DICOM series folder.
        series_uid: SeriesInstanceUID to pick from a folder holding several series.
        resample_nonuniform: resample DICOM series with non-uniform slice spacing.
        warn_nan: warn (MedlensWarning) with the count of NaN voxels.

    Example:
        >>> image = read_image("examples/hippocampus/imagesTr/hippocampus_001.nii.gz")
        >>> image.spatial_shape, image.spacing_mm.tolist()
        ((35, 51, 35), [1.0, 1.0, 1.0])
    """
    path = Path(path)
    if not path.exists():
        raise MedlensError("no such file or folder", path=path, hint="check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise MedlensError("file is empty", path=path)
    kind = image_format(path)
    if kind == "dicom":
        image = read_dicom(path, series_uid=series_uid, resample_nonuniform=resample_nonuniform)
    elif kind == "nifti":
        image = read_nifti(path)
    elif kind == "itk":
        image = read_itk(path)
    else:
        image = read_raster(path)
    if min(image.spatial_shape) == 0 or image.num_channels == 0:
        raise MedlensError(f"image has no voxels (shape {image.array.shape})", path=path)
    values = image.numpy()
    if warn_nan and values.dtype.kind == "f":
        nan_count = int(np.count_nonzero(np.isnan(values)))
        if nan_count:
            warnings.warn(
                f"{path}: {nan_count} of {values.size} voxels are NaN "
                "(repair them with medlens preprocess, e.g. the clean step)",
                MedlensWarning,
                stacklevel=2,
            )
    return image


def write_image(
    image: Image,
    path: str | Path,
    *,
    overwrite: bool = True,
    reference: Image | None = None,
) -> Path:
    """Write ``image`` to ``path`` in the format named by its suffix, atomically.

    A ``.dcm`` output writes a DICOM SEG and needs the source series as ``reference``.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(image, path, overwrite=overwrite)
    if suffix in ITK_SUFFIXES:
        return write_itk(image, path, overwrite=overwrite)
    if suffix in RASTER_SUFFIXES:
        return write_raster(image, path, overwrite=overwrite)
    if suffix == ".dcm":
        if reference is None:
            raise MedlensError(
                "writing DICOM is for segmentations (DICOM SEG) and needs the source series",
                path=path,
                hint="pass --reference DICOM_DIR",
            )
        return write_dicom_seg(image, reference, path, overwrite=overwrite)
    raise MedlensError(
        f"cannot write format '{suffix or '(no suffix)'}'",
        path=path,
        hint="use one of " + ", ".join(WRITABLE_SUFFIXES),
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_output",
    "image_format",
    "list_series",
    "read_dicom",
    "read_dicom_seg",
    "read_image",
    "write_dicom_seg",
    "write_image",
]
