"""NIfTI (.nii, .nii.gz) through nibabel; sform/qform resolved by nibabel, RAS <-> LPS here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io.atomic import atomic_output

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CHUNK_BYTES = 4 << 20


def geometry_from_affine(affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 4x4 LPS affine into spacing (mm), origin (mm) and a unit-column direction."""
    matrix = np.asarray(affine_lps, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    spacing[spacing == 0] = 1.0
    return spacing, np.asarray(affine_lps, dtype=np.float64)[:3, 3].copy(), matrix / spacing


def _read_gzipped_voxels(path: Path, proxy: Any) -> np.ndarray | None:
    """Decompress the voxels of a .nii.gz straight into the output array (ISA-L when present).

    nibabel decompresses with Python's gzip into a bytes object and then copies it (2x the
    array in memory, ~1.5 s for 150 MB); ISA-L's igzip is about twice as fast and ``readinto``
    needs no second copy (see benchmarks/io.py). Returns None where nibabel must do the work.
    """
    try:
        from isal import igzip as gzip_module
    except ImportError:  # optional speed-up: the standard library gives the same bytes
        import gzip as gzip_module
    dtype = np.dtype(proxy.dtype)
    if dtype.hasobject or not dtype.isnative or getattr(proxy, "order", "F") != "F":
        return None
    shape = tuple(int(size) for size in proxy.shape)
    array = np.empty(shape, dtype=dtype, order="F")  # NIfTI voxels are stored Fortran-order
    if array.size == 0:  # nothing to read (read_image refuses an image without voxels)
        return array
    target = memoryview(array.T).cast("B")  # array.T is C-contiguous over the same bytes
    filled = 0
    with gzip_module.open(path, "rb") as handle:
        handle.seek(int(proxy.offset))
        while filled < len(target):
            # bounded chunks: the decompressors build a bytes object per call before copying
            count = handle.readinto(target[filled : filled + _CHUNK_BYTES])
            if not count:
                break
            filled += count
    if filled != len(target):
        raise MedlensError(
            f"NIfTI voxel data is truncated ({filled} of {len(target)} bytes)",
            path=path,
            hint="the file is incomplete: copy or export it again",
        )
    return array


def read_nifti(path: str | Path) -> Image:
    """Read a NIfTI file; voxel values scaled by scl_slope/scl_inter when the header sets them."""
    path = Path(path)
    try:
        nifti = nib.load(str(path))
        proxy = nifti.dataobj
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        data = None
        if not scaled and path.name.lower().endswith(".gz"):
            data = _read_gzipped_voxels(path, proxy)
        if data is None:
            data = nifti.get_fdata(dtype=np.float32) if scaled else np.asanyarray(proxy)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise MedlensError(
            f"cannot read NIfTI ({error})",
            path=path,
            hint="check that the file is a complete .nii or .nii.gz",
        ) from None
    while data.ndim > 4 and data.shape[3] == 1:  # (I, J, K, 1, C) vector images
        data = data.reshape(data.shape[:3] + data.shape[4:])
    if data.ndim == 2:
        array = data[None, :, :, None]
    elif data.ndim == 3:
        array = data[None]
    elif data.ndim == 4:
        array = np.moveaxis(data, 3, 0)
    else:
        raise MedlensError(f"NIfTI with {data.ndim} dimensions is not supported", path=path)
    spacing, origin, direction = geometry_from_affine(_RAS_TO_LPS @ nifti.affine)
    header = nifti.header
    return Image(
        array,
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        metadata={
            "format": "nifti",
            "path": str(path),
            "description": header.get("descrip", np.array(b"")).item().decode("latin-1"),
        },
    )


def write_nifti(image: Image, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write an image as NIfTI-1 with both sform and qform set (scanner coordinates)."""
    values = image.numpy()
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    data = values[0] if image.num_channels == 1 else np.moveaxis(values, 0, 3)
    nifti = nib.Nifti1Image(data, image.affine_ras)
    nifti.set_sform(image.affine_ras, code=1)
    nifti.set_qform(image.affine_ras, code=1)
    nifti.header.set_xyzt_units("mm", "sec")
    with atomic_output(path, overwrite=overwrite) as temporary:
        nib.save(nifti, str(temporary))
    return Path(path)
