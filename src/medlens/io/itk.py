"""NRRD, MHA and MHD through SimpleITK (whose physical space is LPS, like ours)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io.atomic import atomic_output, prepare_output


class _ItkPixelBuffer:
    """Hands a SimpleITK image's pixel buffer to numpy and keeps the image alive with it."""

    def __init__(self, itk_image: sitk.Image) -> None:
        self.itk_image = itk_image
        interface = dict(sitk.GetArrayViewFromImage(itk_image).__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable: nobody else holds it
        self.__array_interface__ = interface


def array_from_sitk(itk_image: sitk.Image) -> np.ndarray:
    """``(K, J, I[, C])`` array on the image's own buffer: no copy, unlike GetArrayFromImage.

    The array keeps the image alive (numpy's ``base``), so the buffer cannot be freed early
    (the danger of a bare ``GetArrayViewFromImage``). Only for images nobody else uses.
    """
    return np.asarray(_ItkPixelBuffer(itk_image))


def image_from_sitk(
    itk_image: sitk.Image, *, metadata: dict | None = None, share_buffer: bool = False
) -> Image:
    """Convert a SimpleITK image (2D or 3D, scalar or vector) without reordering voxels.

    ``share_buffer=True`` wraps the image's pixel buffer instead of copying it (half the peak
    memory); use it only for an image the caller drops afterwards, e.g. one just read.
    """
    dimension = itk_image.GetDimension()
    if dimension not in (2, 3):
        raise MedlensError(f"{dimension}D ITK images are not supported (2D or 3D expected)")
    # (K, J, I[, C]) or (J, I[, C])
    values = array_from_sitk(itk_image) if share_buffer else sitk.GetArrayFromImage(itk_image)
    vector = itk_image.GetNumberOfComponentsPerPixel() > 1
    if dimension == 2:
        values = values[None]
    if not vector:
        values = values[..., None]
    array = values.transpose(3, 2, 1, 0)
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    spacing[:dimension] = itk_image.GetSpacing()
    origin[:dimension] = itk_image.GetOrigin()
    direction[:dimension, :dimension] = np.reshape(itk_image.GetDirection(), (dimension,) * 2)
    return Image(
        array,
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        metadata=dict(metadata or {}),
    )


def image_to_sitk(image: Image) -> sitk.Image:
    """Convert to SimpleITK (3D; several channels become a vector image)."""
    values = image.numpy()
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    if image.num_channels == 1:
        itk_image = sitk.GetImageFromArray(np.ascontiguousarray(values[0].transpose(2, 1, 0)))
    else:
        itk_image = sitk.GetImageFromArray(
            np.ascontiguousarray(values.transpose(3, 2, 1, 0)), isVector=True
        )
    itk_image.SetSpacing([float(v) for v in image.spacing_mm])
    itk_image.SetOrigin([float(v) for v in image.origin_mm])
    itk_image.SetDirection([float(v) for v in image.direction.reshape(-1)])
    return itk_image


def read_itk(path: str | Path) -> Image:
    """Read NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or another SimpleITK format."""
    path = Path(path)
    try:
        itk_image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown"
        raise MedlensError(
            f"cannot read image ({reason})", path=path, hint="check that the file is complete"
        ) from None
    return image_from_sitk(
        itk_image,
        metadata={"format": path.suffix.lstrip(".").lower(), "path": str(path)},
        share_buffer=True,
    )


def write_itk(image: Image, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write NRRD or MHA atomically; MHD (header + .raw) is written in a temp folder and moved."""
    path = Path(path)
    itk_image = image_to_sitk(image)
    if path.suffix.lower() == ".mhd":
        prepare_output(path, overwrite=overwrite)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            sitk.WriteImage(itk_image, str(staging / path.name), True)
            for produced in sorted(staging.iterdir(), key=lambda p: p.suffix == ".mhd"):
                os.replace(produced, path.parent / produced.name)  # data first, header last
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    with atomic_output(path, overwrite=overwrite) as temporary:
        sitk.WriteImage(itk_image, str(temporary), True)
    return path
