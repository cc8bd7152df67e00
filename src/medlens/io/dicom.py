"""DICOM reading: a series folder, a single file, or an enhanced multi-frame file.

Slices are sorted by ImagePositionPatient projected on the slice normal (never by file name
or InstanceNumber), RescaleSlope/Intercept are applied, and compressed transfer syntaxes are
decoded by pydicom's installed pixel plugins (pylibjpeg, pyjpegls). Files are parsed in
parallel and pixels are decoded straight into one preallocated array.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medlens.errors import MedlensError, MedlensWarning
from medlens.image import Image

#: Relative tolerance on slice spacing before a series counts as non-uniform.
SPACING_TOLERANCE = 0.01
#: Angle (degrees) between the slice stacking direction and the slice normal that counts as
#: gantry tilt. Real series show ~0.1 degree from rounded ImagePositionPatient values; real
#: tilts are several degrees.
TILT_TOLERANCE_DEG = 0.25

_PIXEL_DATA = 0x7FE00010
_UNCOMPRESSED = {
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
}


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder."""

    series_instance_uid: str
    description: str
    modality: str
    num_files: int

    def line(self) -> str:
        return (
            f"{self.series_instance_uid} ({self.modality or '?'}, {self.num_files} files, "
            f"{self.description or 'no description'})"
        )


def is_dicom_file(path: Path) -> bool:
    """True if the file has the DICM preamble (or parses as DICOM without one)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                return True
        pydicom.dcmread(path, stop_before_pixels=True, force=False)
        return True
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
        return False


def _list_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            files.append(Path(root) / name)
    return files


def _read_header(path: Path) -> Dataset | None:
    try:
        # defer_size keeps pixel data (and other large values) on disk: one parse per file,
        # and uncompressed pixels are later read straight into the output array.
        return pydicom.dcmread(path, defer_size=4096)
    except Exception:  # pydicom raises struct.error, EOFError, ValueError... on damaged files
        return None


def _has_dicom_prefix(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_truncated(dataset: Dataset, path: Path) -> bool:
    """True if the file ends inside the header: pydicom stops quietly at a premature EOF.

    A complete file ends exactly where its last element's value ends.
    """
    tags = list(dataset.keys())
    if not tags:
        return True
    element = dataset.get_item(tags[-1], keep_deferred=True)
    if not isinstance(element, RawDataElement) or element.length == 0xFFFFFFFF:
        return False  # cannot tell (undefined length): assume complete
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return element.value_tell + element.length != size


def _damaged(path: Path, dataset: Dataset | None) -> bool:
    """A DICOM file (DICM prefix) whose header cannot be parsed or stops early."""
    if dataset is not None and "PixelData" in dataset:
        return False  # the common case, decided without opening the file again
    if not _has_dicom_prefix(path):
        return False
    return dataset is None or ("PixelData" not in dataset and _is_truncated(dataset, path))


def _damaged_error(files: list[Path], source: Path) -> MedlensError:
    names = ", ".join(str(file) for file in files[:5]) + (" ..." if len(files) > 5 else "")
    if len(files) == 1:
        return MedlensError(
            "DICOM file is truncated or damaged (its header ends early)",
            path=files[0],
            hint="copy or export it again",
        )
    return MedlensError(
        f"{len(files)} DICOM files are truncated or damaged: {names}",
        path=source,
        hint="copy or export them again, or remove them from the folder",
    )


def _parallel_map(function: Any, items: Sequence[Any]) -> list[Any]:
    """Map over threads: for pixel reading, where file reads and numpy release the GIL."""
    if len(items) < 8:
        return [function(item) for item in items]
    workers = min(4, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def _read_headers(files: Sequence[Path]) -> list[Dataset | None]:
    # Sequential on purpose: header parsing is pure Python and holds the GIL, so threads
    # made it 2-3x slower in benchmarks/io.py (300 CT files: ~0.1 s sequential).
    return [_read_header(file) for file in files]


#: Type 2 patient and study attributes that highdicom copies from the source images into a
#: derived object (SEG, SR); real exports often omit them
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def fill_type2_attributes(dataset: Dataset) -> Dataset:
    """Add the :data:`TYPE2_COPIED` attributes ``dataset`` lacks, present but empty (valid for
    Type 2), so highdicom can derive a SEG or SR from it (e.g. the hippocampus crops have no
    PatientBirthDate)."""
    for keyword in TYPE2_COPIED:
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    return dataset


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """The series in a DICOM folder (recursively), largest first."""
    datasets = [ds for ds in _read_headers(_list_files(Path(folder))) if ds]
    return _summarise_series(_group_by_series(datasets))


def _group_by_series(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    groups: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        if "PixelData" not in dataset and dataset.get("Modality") != "SEG":
            continue  # SR, presentation states and other non-image objects
        groups.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(dataset)
    return groups


def _is_seg(group: Sequence[Dataset]) -> bool:
    return group[0].get("Modality") == "SEG"


def _summarise_series(groups: dict[str, list[Dataset]]) -> list[SeriesInfo]:
    infos = [
        SeriesInfo(
            series_instance_uid=uid,
            description=str(items[0].get("SeriesDescription", "")),
            modality=str(items[0].get("Modality", "")),
            num_files=len(items),
        )
        for uid, items in groups.items()
    ]
    return sorted(infos, key=lambda info: -info.num_files)


def read_dicom(
    path: str | Path,
    *,
    series_uid: str | None = None,
    resample_nonuniform: bool = False,
) -> Image:
    """Read a DICOM file or series folder into an :class:`Image` (LPS geometry).

    Args:
        path: a DICOM file, or a folder holding one series (searched recursively); a folder
            with one image series and DICOM SEG objects reads the image series.
        series_uid: SeriesInstanceUID to pick when the folder holds several series.
        resample_nonuniform: linearly resample a series with non-uniform slice spacing onto
            a uniform grid instead of refusing it.

    A DICOM SEG file is read as a label map.
    """
    path = Path(path)
    if not path.exists():
        raise MedlensError("no such file or folder", path=path, hint="check the path")
    if path.is_file():
        dataset = _read_header(path)
        if _damaged(path, dataset):
            raise _damaged_error([path], path)
        if dataset is None:
            raise MedlensError(
                "not a readable DICOM file (no DICOM header)",
                path=path,
                hint="check that it is a DICOM file and not truncated or another format",
            )
        if dataset.get("Modality") == "SEG":
            from medlens.io.seg import read_dicom_seg

            return read_dicom_seg(path)
        return _volume_from_datasets([dataset], path)

    files = _list_files(path)
    if not files:
        raise MedlensError("folder is empty", path=path, hint="point to a folder of DICOM files")
    datasets = _read_headers(files)
    damaged = [file for file, ds in zip(files, datasets, strict=True) if _damaged(file, ds)]
    if damaged:
        raise _damaged_error(damaged, path)
    unreadable = [str(file) for file, ds in zip(files, datasets, strict=True) if ds is None]
    groups = _group_by_series([ds for ds in datasets if ds is not None])
    if not groups:
        raise MedlensError(
            f"no DICOM images found among {len(files)} files",
            path=path,
            hint="point to a folder of DICOM image files",
        )
    if unreadable:
        warnings.warn(
            f"{path}: skipped {len(unreadable)} files that are not DICOM: "
            + ", ".join(unreadable[:5])
            + (" ..." if len(unreadable) > 5 else ""),
            MedlensWarning,
            stacklevel=2,
        )
    image_groups = [group for group in groups.values() if not _is_seg(group)]
    if series_uid is not None:
        if series_uid not in groups:
            raise MedlensError(
                f"series {series_uid} not found; series here: "
                + "; ".join(info.line() for info in _summarise_series(groups)),
                path=path,
                hint="pass one of these UIDs to --series",
            )
        chosen = groups[series_uid]
    elif len(groups) > 1 and len(image_groups) == 1:
        # a study folder holding its image series plus segmentations of it (e.g. the SEG
        # `medlens predict` wrote there): the image series is what is meant
        chosen = image_groups[0]
    elif len(groups) > 1:
        raise MedlensError(
            f"folder holds {len(groups)} series: "
            + "; ".join(info.line() for info in _summarise_series(groups)),
            path=path,
            hint="pick one with --series UID (`medlens info FOLDER` lists them)",
        )
    else:
        chosen = next(iter(groups.values()))
    if _is_seg(chosen):
        from medlens.io.seg import read_dicom_seg

        return read_dicom_seg(Path(chosen[0].filename))
    return _volume_from_datasets(chosen, path, resample_nonuniform=resample_nonuniform)


# --------------------------------------------------------------------------- geometry
def _float_list(value: Any, length: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (length,) else None


@dataclasses.dataclass
class _Frame:
    """One 2D frame of a series: where it is and how to get its pixels."""

    dataset: Dataset
    frame_index: int | None  # None for single-frame files
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    slope: float
    intercept: float


def _functional(dataset: Dataset, frame_index: int, sequence: str, attribute: str) -> Any:
    """Look an attribute up in the per-frame, then the shared functional groups."""
    for groups_name, index in (
        ("PerFrameFunctionalGroupsSequence", frame_index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = dataset.get(groups_name)
        if not groups or index >= len(groups):
            continue
        item = groups[index].get(sequence)
        if item and attribute in item[0]:
            return item[0][attribute].value
    return None


def _frames_of(dataset: Dataset) -> list[_Frame]:
    num_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        slope, intercept = 1.0, 0.0  # the modality LUT does not apply to colour pixels
    spacing = _float_list(dataset.get("PixelSpacing"), 2)
    if spacing is None:
        spacing = _float_list(dataset.get("ImagerPixelSpacing"), 2)
    if num_frames == 1 and "PerFrameFunctionalGroupsSequence" not in dataset:
        return [
            _Frame(
                dataset,
                None,
                _float_list(dataset.get("ImagePositionPatient"), 3),
                _float_list(dataset.get("ImageOrientationPatient"), 6),
                spacing,
                slope,
                intercept,
            )
        ]
    frames = []
    for index in range(num_frames):
        position = _functional(dataset, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(
            dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        frame_spacing = _functional(dataset, index, "PixelMeasuresSequence", "PixelSpacing")
        frame_slope = _functional(
            dataset, index, "PixelValueTransformationSequence", "RescaleSlope"
        )
        frame_intercept = _functional(
            dataset, index, "PixelValueTransformationSequence", "RescaleIntercept"
        )
        frames.append(
            _Frame(
                dataset,
                index,
                _float_list(position, 3)
                if position is not None
                else _float_list(dataset.get("ImagePositionPatient"), 3),
                _float_list(orientation, 6)
                if orientation is not None
                else _float_list(dataset.get("ImageOrientationPatient"), 6),
                _float_list(frame_spacing, 2) if frame_spacing is not None else spacing,
                float(frame_slope) if frame_slope is not None else slope,
                float(frame_intercept) if frame_intercept is not None else intercept,
            )
        )
    return frames


def _slice_geometry(
    frames: list[_Frame], source: Path, *, resample_nonuniform: bool
) -> tuple[list[_Frame], np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Sort frames along the normal.

    Returns frames, spacing, origin, direction and, for a non-uniform series that is to be
    resampled, the measured and the uniform slice distances along the normal.
    """
    first = frames[0]
    in_plane = first.pixel_spacing if first.pixel_spacing is not None else np.ones(2)
    located = all(f.position is not None and f.orientation is not None for f in frames)
    if not located:
        # No patient geometry (secondary capture, photos, cine): stack frames as given.
        thickness = float(first.dataset.get("SpacingBetweenSlices", 0) or 0) or 1.0
        spacing = np.array([in_plane[1], in_plane[0], thickness])
        return frames, spacing, np.zeros(3), np.eye(3), None

    orientation = first.orientation
    assert orientation is not None
    if any(not np.allclose(f.orientation, orientation, atol=1e-4) for f in frames):
        raise MedlensError(
            "slices have different ImageOrientationPatient (several stacks in one series?)",
            path=source,
            hint="split the series, e.g. by acquisition, before reading",
        )
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    direction = np.stack([row_direction, column_direction, normal], axis=1)
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(distances, kind="stable")
    frames = [frames[i] for i in order]
    distances = distances[order]
    positions = np.stack([f.position for f in frames])  # type: ignore[misc]

    if len(frames) == 1:
        thickness = float(
            first.dataset.get("SpacingBetweenSlices", 0)
            or first.dataset.get("SliceThickness", 0)
            or 1.0
        )
        spacing = np.array([in_plane[1], in_plane[0], thickness])
        return frames, spacing, positions[0], direction, None

    steps = np.diff(distances)
    if np.any(steps < 1e-4):
        duplicates = int(np.sum(steps < 1e-4))
        raise MedlensError(
            f"{duplicates} slices share a position with another slice "
            "(several acquisitions or echoes in one series?)",
            path=source,
            hint="split the series by AcquisitionNumber/EchoNumbers or pass one folder per volume",
        )
    stack_vector = positions[-1] - positions[0]
    cosine = float(np.dot(stack_vector, normal) / np.linalg.norm(stack_vector))
    tilt_deg = float(np.degrees(np.arccos(min(1.0, abs(cosine)))))
    if tilt_deg > TILT_TOLERANCE_DEG:
        raise MedlensError(
            f"gantry tilt of {tilt_deg:.2f} degrees detected (slices are sheared, not stacked "
            "along their normal)",
            path=source,
            hint="resample the series onto an orthogonal grid first (e.g. with a tilt-correcting "
            "converter); medlens refuses rather than misplace voxels",
        )
    # Like ITK's ImageSeriesReader: first-to-last distance over the number of gaps.
    slice_spacing = float(np.linalg.norm(stack_vector)) / (len(frames) - 1)
    deviation = float(np.max(np.abs(steps - slice_spacing)))
    uniform_positions = None
    if deviation > SPACING_TOLERANCE * slice_spacing:
        message = (
            f"non-uniform slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
            f"(median {float(np.median(steps)):.4g} mm)"
        )
        if not resample_nonuniform:
            raise MedlensError(
                message + " (missing slices?)",
                path=source,
                hint="pass --resample-nonuniform to resample onto a uniform grid",
            )
        # Resample onto the median step: with a missing slice that is the scanner's own grid,
        # so every acquired slice keeps its exact values and only the gap is interpolated.
        slice_spacing = float(np.median(steps))
        warnings.warn(
            f"{source}: {message}; resampled linearly to {slice_spacing:.4g} mm",
            MedlensWarning,
            stacklevel=3,
        )
        count = int(round((distances[-1] - distances[0]) / slice_spacing)) + 1
        uniform_positions = (distances, distances[0] + slice_spacing * np.arange(count))
    spacing = np.array([in_plane[1], in_plane[0], slice_spacing])
    return frames, spacing, positions[0], direction, uniform_positions


# --------------------------------------------------------------------------- pixels
def _output_dtype(frames: list[_Frame]) -> np.dtype:
    dataset = frames[0].dataset
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        return (
            np.dtype(np.uint8) if int(dataset.get("BitsAllocated", 8)) == 8 else np.dtype(np.uint16)
        )
    integral = all(f.slope == 1 and float(f.intercept).is_integer() for f in frames)
    if not integral:
        return np.dtype(np.float32)
    bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low = -(2 ** (bits_stored - 1)) if signed else 0
    high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    intercepts = [f.intercept for f in frames]
    low, high = low + min(intercepts), high + max(intercepts)
    if all(f.intercept == 0 for f in frames) and not signed and bits_stored <= 8:
        return np.dtype(np.uint8)
    if low >= -32768 and high <= 32767:
        return np.dtype(np.int16)
    if low >= 0 and high <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _native_layout(dataset: Dataset) -> tuple[np.dtype, int] | None:
    """Stored dtype and BitsStored of uncompressed grey pixels (any frame count), else None."""
    if dataset.file_meta.get("TransferSyntaxUID") not in _UNCOMPRESSED:
        return None
    bits = int(dataset.get("BitsAllocated", 0))
    bits_stored = int(dataset.get("BitsStored", bits) or bits)
    if (
        int(dataset.get("SamplesPerPixel", 1)) != 1
        or bits not in (8, 16, 32)
        or not 0 < bits_stored <= bits
    ):
        return None
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), bits_stored


def _keep_stored_bits(values: np.ndarray, bits_stored: int) -> None:
    """In place: drop bits above HighBit (unsigned) or sign-extend from BitsStored (signed)."""
    bits = values.dtype.itemsize * 8
    if bits_stored >= bits:
        return
    if values.dtype.kind == "u":
        np.bitwise_and(values, values.dtype.type((1 << bits_stored) - 1), out=values)
    else:
        shift = values.dtype.type(bits - bits_stored)
        np.left_shift(values, shift, out=values)
        np.right_shift(values, shift, out=values)


def _rescale_into(pixels: np.ndarray, target: np.ndarray, frame: _Frame) -> None:
    """Write ``slope * pixels + intercept`` into ``target`` (the output dtype)."""
    pixels = pixels.reshape(target.shape)
    if frame.slope == 1 and frame.intercept == 0:
        np.copyto(target, pixels, casting="unsafe")
    elif target.dtype.kind == "f":
        np.multiply(pixels, np.float32(frame.slope), out=target, casting="unsafe")
        target += np.float32(frame.intercept)
    else:
        np.copyto(target, pixels, casting="unsafe")
        target += target.dtype.type(frame.intercept)


def _truncated(dataset: Dataset, got: int, expected: int) -> MedlensError:
    return MedlensError(
        f"pixel data is truncated ({got} of {expected} bytes)",
        path=dataset.filename,
        hint="the file is incomplete: copy or export it again",
    )


def _read_native_into(frame: _Frame, target: np.ndarray) -> bool:
    """Fast path for uncompressed grey frames: read the pixel bytes straight into ``target``.

    With a deferred (not yet loaded) PixelData element, the bytes go from the file into the
    output buffer with ``readinto``: no pydicom decode and no intermediate copy when the
    stored type has the output's width (e.g. 12-bit CT into int16). Returns False where
    pydicom must decode instead.
    """
    dataset = frame.dataset
    layout = _native_layout(dataset)
    if layout is None:
        return False
    stored, bits_stored = layout
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    count = rows * columns
    expected = count * stored.itemsize
    start = (frame.frame_index or 0) * expected  # frames of a multi-frame file are contiguous
    element = dataset.get_item(_PIXEL_DATA, keep_deferred=True)
    deferred = (
        isinstance(element, RawDataElement)
        and element.value is None
        and isinstance(dataset.filename, str)
    )
    if not deferred:
        data = dataset.PixelData
        if len(data) < start + expected:
            raise _truncated(dataset, len(data), start + expected)
        pixels = np.frombuffer(data, dtype=stored, count=count, offset=start)
        if bits_stored < stored.itemsize * 8:
            pixels = pixels.copy()
            _keep_stored_bits(pixels, bits_stored)
        _rescale_into(pixels, target, frame)
        return True

    assert isinstance(element, RawDataElement)
    if element.length < start + expected:
        raise _truncated(dataset, element.length, start + expected)
    # Stored values fit the output type bit for bit: read in place, fix up in place.
    low = -(1 << (bits_stored - 1)) if stored.kind == "i" else 0
    high = (1 << (bits_stored - 1)) - 1 if stored.kind == "i" else (1 << bits_stored) - 1
    in_place = (
        target.dtype.kind in "iu"
        and target.dtype.itemsize == stored.itemsize
        and np.iinfo(target.dtype).min <= low
        and high <= np.iinfo(target.dtype).max
        and target.flags.c_contiguous
    )
    pixels = target.reshape(-1).view(stored) if in_place else np.empty(count, dtype=stored)
    with open(dataset.filename, "rb") as handle:
        handle.seek(element.value_tell + start)
        got = handle.readinto(memoryview(pixels).cast("B"))
    if got != expected:
        raise _truncated(dataset, got, expected)
    _keep_stored_bits(pixels, bits_stored)
    if not in_place:
        _rescale_into(pixels, target, frame)
    elif frame.slope == 1 and frame.intercept != 0:
        target += target.dtype.type(frame.intercept)
    return True


def _decode_frame(frame: _Frame, source: Path) -> np.ndarray:
    """Decode one frame with pydicom (compressed syntaxes, colour, odd bit depths)."""
    dataset = frame.dataset
    try:
        pixels = pydicom.pixels.pixel_array(dataset, index=frame.frame_index)
    except Exception as error:  # pydicom raises many types for broken pixel data
        filename = getattr(dataset, "filename", None) or source
        raise MedlensError(
            f"cannot decode pixel data ({type(error).__name__}: {error})",
            path=filename,
            hint="the file may be truncated or use a transfer syntax without an installed "
            "decoder (install pylibjpeg plugins or python-gdcm)",
        ) from None
    if frame.frame_index is None and isinstance(dataset.filename, str):
        # Drop the loaded (compressed) bytes so that only the output array stays in memory.
        del dataset.PixelData
    return pixels


def _volume_from_datasets(
    datasets: list[Dataset], source: Path, *, resample_nonuniform: bool = False
) -> Image:
    frames = [frame for dataset in datasets for frame in _frames_of(dataset)]
    for frame in frames:
        if "PixelData" not in frame.dataset:
            raise MedlensError("DICOM file has no pixel data", path=frame.dataset.filename)
    frames, spacing, origin, direction, resample = _slice_geometry(
        frames, source, resample_nonuniform=resample_nonuniform
    )
    first = frames[0].dataset
    rows, columns = int(first.Rows), int(first.Columns)
    for frame in frames:
        if (int(frame.dataset.Rows), int(frame.dataset.Columns)) != (rows, columns):
            raise MedlensError(
                "slices differ in size "
                f"({rows}x{columns} vs {frame.dataset.Rows}x{frame.dataset.Columns})",
                path=frame.dataset.filename or source,
                hint="the folder mixes images of different series or localisers",
            )
    samples = int(first.get("SamplesPerPixel", 1))
    dtype = _output_dtype(frames)
    # (K, rows, columns[, samples]) buffer, filled in place; exposed as (C, I, J, K) views.
    buffer = np.empty((len(frames), rows, columns, samples), dtype=dtype)

    def fill(index: int) -> None:
        frame = frames[index]
        target = buffer[index]
        if samples == 1 and _read_native_into(frame, target):
            return
        pixels = _decode_frame(frame, source)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.shape != (rows, columns, samples):
            raise MedlensError(
                f"pixel data has shape {pixels.shape}, expected {(rows, columns, samples)}",
                path=frame.dataset.filename or source,
            )
        _rescale_into(pixels, target, frame)

    for dataset in {id(frame.dataset): frame.dataset for frame in frames}.values():
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1 and _native_layout(dataset) is None:
            # load the (compressed) pixel data of multi-frame files once, not racily per thread
            _ = dataset.PixelData
    _parallel_map(fill, list(range(len(frames))))
    array = buffer.transpose(3, 2, 1, 0)  # (C, I=columns, J=rows, K=slices), no copy
    if resample is not None:
        array = _resample_slices(array, *resample)
    modality = str(first.get("Modality", ""))
    metadata = _series_metadata(frames, source)
    if resample is not None:
        # slices no longer correspond one-to-one to the source files (matters for SEG output)
        metadata["resampled_slices"] = True
    return Image(
        array,
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        modality=modality,
        metadata=metadata,
    )


def _resample_slices(array: np.ndarray, distances: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Linear interpolation along k from measured to uniform slice positions."""
    upper = np.clip(np.searchsorted(distances, targets, side="right"), 1, len(distances) - 1)
    lower = upper - 1
    weight = ((targets - distances[lower]) / (distances[upper] - distances[lower])).astype(
        np.float32
    )
    values = array.astype(np.float32)
    return values[..., lower] * (1 - weight) + values[..., upper] * weight


def _series_metadata(frames: list[_Frame], source: Path) -> dict[str, Any]:
    first = frames[0].dataset
    patient = {
        "name": str(first.get("PatientName", "")),
        "id": str(first.get("PatientID", "")),
        "birth_date": str(first.get("PatientBirthDate", "")),
        "sex": str(first.get("PatientSex", "")),
    }
    files = []
    for frame in frames:
        filename = str(frame.dataset.filename) if frame.dataset.filename else ""
        if not files or files[-1] != filename:
            files.append(filename)
    return {
        "format": "dicom",
        "path": str(source),
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "sop_instance_uids": [str(f.dataset.get("SOPInstanceUID", "")) for f in frames],
        "series_description": str(first.get("SeriesDescription", "")),
        "transfer_syntax": str(first.file_meta.get("TransferSyntaxUID", "")),
        "photometric_interpretation": str(first.get("PhotometricInterpretation", "")),
        "source_files": files,
        "patient": patient,
    }
