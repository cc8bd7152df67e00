"""2D images (PNG, JPEG, TIFF, BMP) through OpenCV, as ``(C, W, H, 1)`` images in RGB order."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io.atomic import atomic_output

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def decode_raster(path: str | Path) -> np.ndarray:
    """OpenCV's pixels of a PNG/JPEG/TIFF/BMP file (BGR(A) order, 8 or 16 bit), refusing
    files that are missing, empty, undecodable or truncated, by name."""
    path = Path(path)
    if not path.is_file():
        raise MedlensError("image file not found", path=path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise MedlensError("file is empty", path=path)
    if _is_truncated_jpeg(data):
        # libjpeg decodes a cut-off file with a warning, filling the missing rows with grey;
        # a model would then segment or detect on half an image without anyone noticing
        raise MedlensError(
            "truncated JPEG (no end-of-image marker after the last scan)",
            path=path,
            hint="copy or export the file again; it was cut off",
        )
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise MedlensError(
            "cannot decode image (corrupt or not a PNG/JPEG/TIFF)",
            path=path,
            hint="check that the file opens in an image viewer",
        )
    return pixels


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG whose last start-of-scan marker has no end-of-image marker after it. Entropy-coded
    data stuffs every 0xFF byte, so both markers occur only as markers; an EXIF thumbnail's
    own scan and end marker come before the main image's scan."""
    raw = data.tobytes()
    if not raw.startswith(b"\xff\xd8"):
        return False
    return raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda")


def read_raster(path: str | Path) -> Image:
    """Read a 2D image; colour comes back as RGB(A) channels, grey as one channel."""
    path = Path(path)
    pixels = decode_raster(path)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    elif pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    array = pixels.transpose(2, 1, 0)[..., None]  # (H, W, C) -> (C, W, H, 1)
    return Image(array, metadata={"format": path.suffix.lstrip(".").lower(), "path": str(path)})


def to_raster_pixels(image: Image) -> np.ndarray:
    """``(H, W[, C])`` pixels ready for OpenCV (BGR order), refusing what PNG cannot hold."""
    if not image.is_2d:
        raise MedlensError(
            f"a 2D image format needs a single slice, got shape {image.spatial_shape}",
            hint="write volumes as .nii.gz, .nrrd or .mha",
        )
    values = image.numpy()[..., 0].transpose(2, 1, 0)  # (H, W, C)
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    if values.dtype not in (np.uint8, np.uint16):
        if values.dtype.kind in "iu" and values.min() >= 0 and values.max() <= 65535:
            values = values.astype(np.uint8 if values.max() <= 255 else np.uint16)
        else:
            raise MedlensError(
                f"PNG/JPEG hold 8- or 16-bit unsigned pixels, this image is {values.dtype} "
                f"in [{values.min():.4g}, {values.max():.4g}]",
                hint="window or rescale it to 0..255 first (medlens preprocess)",
            )
    channels = values.shape[2]
    if channels == 1:
        return values[..., 0]
    if channels == 3:
        return cv2.cvtColor(np.ascontiguousarray(values), cv2.COLOR_RGB2BGR)
    if channels == 4:
        return cv2.cvtColor(np.ascontiguousarray(values), cv2.COLOR_RGBA2BGRA)
    raise MedlensError(f"cannot write {channels} channels to a 2D image format")


def write_raster(image: Image, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a single-slice image as PNG/JPEG/TIFF (8 or 16 bit)."""
    pixels = to_raster_pixels(image)
    with atomic_output(path, overwrite=overwrite) as temporary:
        if not cv2.imwrite(str(temporary), pixels):
            raise MedlensError("OpenCV could not encode the image", path=path)
    return Path(path)
