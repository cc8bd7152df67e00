"""DICOM SEG: label maps written against their source series (highdicom) and read back.

Each label value becomes one segment (segment numbers 1..N in label order) named after the
image's ``labels``; the SEG references the source series' study, frame of reference and
SOP instances, so PACS viewers overlay it on the original images.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io.atomic import atomic_output
from medlens.io.dicom import fill_type2_attributes
from medlens.io.nifti import geometry_from_affine

_CATEGORY = codes.SCT.Tissue
_TYPE = hd.sr.CodedConcept(
    value="91723000", scheme_designator="SCT", meaning="Anatomical Structure"
)


def write_dicom_seg(
    label_map: Image,
    reference: Image,
    path: str | Path,
    *,
    overwrite: bool = True,
    algorithm_name: str = "medlens",
    algorithm_version: str = "0",
    series_description: str = "medlens segmentation",
) -> Path:
    """Write ``label_map`` (on ``reference``'s grid) as a binary DICOM SEG.

    Args:
        label_map: integer label image, same grid as ``reference``.
        reference: the DICOM series it was made from, as returned by ``read_image``.
        path: output ``.dcm`` file.
    """
    if reference.metadata.get("format") != "dicom" or not reference.metadata.get("source_files"):
        raise MedlensError(
            "DICOM SEG needs the source DICOM series as reference",
            path=path,
            hint="pass --reference DICOM_DIR (the series the mask was drawn on)",
        )
    if reference.metadata.get("resampled_slices"):
        raise MedlensError(
            "the reference series was resampled (non-uniform slices), so its slices no longer "
            "match the source files a SEG must point to",
            path=path,
            hint="write the mask as NIfTI instead",
        )
    label_map.require_3d_single_channel(source="DICOM SEG output", path=path)
    values = label_map.numpy()
    if values.dtype.kind not in "iub":
        if not np.array_equal(values, np.round(values)):
            raise MedlensError(
                "DICOM SEG needs an integer label map, got fractional values",
                path=path,
                hint="threshold or argmax the prediction first",
            )
        values = values.astype(np.int64)
    if not label_map.same_grid(reference, tolerance_mm=1e-2):
        raise MedlensError(
            f"label map grid {label_map.spatial_shape} @ {label_map.spacing_mm.tolist()} mm "
            f"does not match the reference series grid {reference.spatial_shape} @ "
            f"{reference.spacing_mm.tolist()} mm",
            path=path,
            hint="resample the mask onto the reference series first",
        )
    present = sorted(int(v) for v in np.unique(values) if v != 0)
    names = dict(label_map.labels or {})
    label_values = sorted(set(present) | {v for v in names if v != 0})
    if not label_values:
        raise MedlensError("label map is empty (no foreground), nothing to write", path=path)
    lookup = np.zeros(max(label_values) + 1, dtype=np.uint16)
    for number, value in enumerate(label_values, start=1):
        lookup[value] = number
    # (K, rows, columns) in the reference's sorted slice order
    frames = lookup[values[0].transpose(2, 1, 0)]

    source_files = reference.metadata["source_files"]
    sources = [fill_type2_attributes(pydicom.dcmread(f)) for f in source_files]
    if len(sources) != frames.shape[0]:
        raise MedlensError(
            "multi-frame source series are not supported for DICOM SEG output yet",
            path=path,
            hint="write NIfTI instead",
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names.get(value, f"label {value}"),
            segmented_property_category=_CATEGORY,
            segmented_property_type=_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(label_values, start=1)
    ]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medlens",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )
    with atomic_output(path, overwrite=overwrite) as temporary:
        segmentation.save_as(temporary)
    return Path(path)


def read_dicom_seg(path: str | Path) -> Image:
    """Read a DICOM SEG as a label map (values = segment numbers, names from SegmentLabel)."""
    path = Path(path)
    try:
        segmentation = hd.seg.segread(str(path))
        volume = segmentation.get_volume(combine_segments=True, relabel=False)
    except Exception as error:  # highdicom raises ValueError/RuntimeError/AttributeError
        raise MedlensError(
            f"cannot read DICOM SEG as a volume ({error})",
            path=path,
            hint="only SEGs of regularly spaced slices can be read as a label map",
        ) from None
    array = np.asarray(volume.array)
    spacing, origin, direction = geometry_from_affine(volume.affine)
    array, spacing, origin, direction = _to_dicom_axis_order(
        array, spacing, origin, direction, _segmentation_orientation(segmentation)
    )
    labels = {
        int(item.SegmentNumber): str(item.SegmentLabel) for item in segmentation.SegmentSequence
    }
    dtype = np.uint8 if max(labels, default=0) < 256 else np.uint16
    return Image(
        array.astype(dtype)[None],
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        modality="SEG",
        labels={0: "background", **labels},
        metadata={
            "format": "dicom-seg",
            "path": str(path),
            "study_instance_uid": str(segmentation.StudyInstanceUID),
            "series_instance_uid": str(segmentation.SeriesInstanceUID),
            "frame_of_reference_uid": str(segmentation.get("FrameOfReferenceUID", "")),
            "referenced_series_instance_uid": _referenced_series(segmentation),
        },
    )


def _segmentation_orientation(segmentation: pydicom.Dataset) -> np.ndarray | None:
    try:
        shared = segmentation.SharedFunctionalGroupsSequence[0]
        return np.array(
            shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64
        )
    except (AttributeError, IndexError, KeyError):
        return None


def _referenced_series(segmentation: pydicom.Dataset) -> str:
    try:
        return str(segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        return ""


def _to_dicom_axis_order(
    array: np.ndarray,
    spacing: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
    orientation: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Permute/flip axes so that i runs along the rows, j down the columns, k along the normal.

    That is the order of the DICOM reader, so a SEG reads back on its source series' grid.
    """
    if orientation is None:
        return array, spacing, origin, direction
    row, column = orientation[:3], orientation[3:]
    targets = np.stack([row, column, np.cross(row, column)], axis=1)
    permutation = [int(np.argmax(np.abs(targets[:, axis] @ direction))) for axis in range(3)]
    if sorted(permutation) != [0, 1, 2]:
        return array, spacing, origin, direction
    array = array.transpose(permutation)
    spacing = spacing[permutation]
    direction = direction[:, permutation]
    affine_step = direction * spacing
    for axis in range(3):
        if float(direction[:, axis] @ targets[:, axis]) < 0:
            origin = origin + affine_step[:, axis] * (array.shape[axis] - 1)
            array = np.flip(array, axis=axis)
            direction[:, axis] = -direction[:, axis]
            affine_step[:, axis] = -affine_step[:, axis]
    return np.ascontiguousarray(array), spacing, origin, direction
