"""DICOM SEG: a mask written against a real DICOM series reads back (medlens and highdicom)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from cli_runner import run_cli

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io import read_image, write_image

NAMES = {1: "anterior", 2: "posterior"}


@pytest.fixture(scope="module")
def hippocampus_mri(shared_data: Path) -> Path:
    folder = shared_data / "dicom" / "hippocampus-mri"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


def realistic_mask(image: Image) -> Image:
    """Bright tissue split into two labels along j, like anterior/posterior hippocampus."""
    values = image.numpy()[0].astype(np.float32)
    foreground = values > np.percentile(values, 85)
    labels = np.zeros(values.shape, np.uint8)
    middle = values.shape[1] // 2
    labels[:, :middle][foreground[:, :middle]] = 1
    labels[:, middle:][foreground[:, middle:]] = 2
    assert (labels == 1).sum() > 100 and (labels == 2).sum() > 100
    return image.with_array(labels[None], labels=dict(NAMES), modality="SEG")


def source_sop_uids(folder: Path) -> dict[str, pydicom.Dataset]:
    datasets = [pydicom.dcmread(file, stop_before_pixels=True) for file in folder.iterdir()]
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def check_seg(seg_path: Path, mask: Image, reference: Image, folder: Path) -> None:
    # 1. our reader: same grid, same voxels, named segments
    back = read_image(seg_path)
    assert back.same_grid(reference, tolerance_mm=1e-3)
    np.testing.assert_allclose(back.direction, reference.direction, atol=1e-6)
    np.testing.assert_array_equal(back.numpy(), mask.numpy())
    assert back.labels == {0: "background", **NAMES}

    # 2. highdicom, slice by slice against the source SOP instances (no geometry code of ours)
    segmentation = hd.seg.segread(seg_path)
    assert {int(s.SegmentNumber): str(s.SegmentLabel) for s in segmentation.SegmentSequence} == (
        NAMES
    )
    sources = source_sop_uids(folder)
    sop_order = reference.metadata["sop_instance_uids"]
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_order, segment_numbers=[1, 2], combine_segments=True
    )
    assert pixels.shape[0] == len(sop_order)
    # highdicom gives (frames, rows, columns); ours is (i=columns, j=rows, k=frames)
    np.testing.assert_array_equal(pixels, mask.numpy()[0].transpose(2, 1, 0))

    # 3. references back to the source study, series, frame of reference and instances
    first = next(iter(sources.values()))
    assert segmentation.StudyInstanceUID == first.StudyInstanceUID
    assert segmentation.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert segmentation.SeriesInstanceUID != first.SeriesInstanceUID
    referenced_series = segmentation.ReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {
        str(item.ReferencedSOPInstanceUID) for item in referenced_series.ReferencedInstanceSequence
    }
    assert referenced == set(sources)
    assert back.metadata["referenced_series_instance_uid"] == first.SeriesInstanceUID


def test_cli_writes_seg_from_nifti_mask(hippocampus_mri: Path, tmp_path: Path) -> None:
    folder = hippocampus_mri / "study1" / "hcrop"
    reference = read_image(folder)
    mask = realistic_mask(reference)
    write_image(mask, tmp_path / "mask.nii.gz")
    seg_path = tmp_path / "seg.dcm"

    code = run_cli(
        [
            "convert",
            str(tmp_path / "mask.nii.gz"),
            str(seg_path),
            "--reference",
            str(folder),
            "--labels",
            "1=anterior,2=posterior",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "seg.dcm"]
    check_seg(seg_path, mask, reference, folder)


@pytest.mark.parametrize("series", ["study1/hcrop", "study1/t1post"])
def test_api_writes_seg_that_reads_back(hippocampus_mri: Path, series: str, tmp_path: Path) -> None:
    folder = hippocampus_mri / series
    reference = read_image(folder)
    mask = realistic_mask(reference)
    seg_path = write_image(mask, tmp_path / "seg.dcm", reference=reference)
    check_seg(seg_path, mask, reference, folder)


def test_seg_on_another_grid_is_refused(hippocampus_mri: Path, tmp_path: Path) -> None:
    reference = read_image(hippocampus_mri / "study1" / "hcrop")
    other = read_image(hippocampus_mri / "study2" / "hcrop")
    with pytest.raises(MedlensError, match="does not match the reference series grid"):
        write_image(realistic_mask(other), tmp_path / "seg.dcm", reference=reference)
    assert list(tmp_path.iterdir()) == []


def test_seg_needs_a_reference(hippocampus_mri: Path, tmp_path: Path) -> None:
    mask = realistic_mask(read_image(hippocampus_mri / "study1" / "hcrop"))
    with pytest.raises(MedlensError, match="--reference"):
        write_image(mask, tmp_path / "seg.dcm")
