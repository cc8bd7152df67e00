"""DICOM reading on real series: geometry as SimpleITK sees it, sorting, compression, multi-frame.

Every series in ``../shared/data/dicom/hippocampus-mri`` is checked voxel by voxel against
SimpleITK's ImageSeriesReader; files that the tests change are copies in ``tmp_path``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medlens.errors import MedlensError, MedlensWarning
from medlens.io import read_image, write_image

SERIES = ["study1/hcrop", "study2/hcrop", "study1/t1post"]


@pytest.fixture(scope="module")
def hippocampus_mri(shared_data: Path) -> Path:
    folder = shared_data / "dicom" / "hippocampus-mri"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


@pytest.fixture(scope="module")
def hcrop(hippocampus_mri: Path) -> Path:
    return hippocampus_mri / "study1" / "hcrop"


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def index_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Corners, middles and an off-centre voxel of every axis: 4**3 indices."""
    per_axis = [sorted({0, 1, size // 2, size - 1}) for size in shape]
    grid = np.stack(np.meshgrid(*per_axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.float64)


def copy_series(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for file in sorted(source.iterdir()):
        copy = target / file.name
        shutil.copyfile(file, copy)  # copyfile: the shared data is read-only, copies must not be
        copies.append(copy)
    return copies


def sorted_datasets(folder: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(file) for file in folder.iterdir()]
    normal = np.cross(*np.reshape(np.array(datasets[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(datasets, key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))


# ----------------------------------------------------------------------------- vs SimpleITK
@pytest.mark.parametrize("series", SERIES)
def test_voxel_positions_and_values_match_simpleitk(hippocampus_mri: Path, series: str) -> None:
    folder = hippocampus_mri / series
    image = read_image(folder)
    reference = sitk_series(folder)

    assert image.spatial_shape == reference.GetSize()
    assert image.num_channels == 1
    np.testing.assert_array_equal(
        image.numpy()[0], sitk.GetArrayFromImage(reference).transpose(2, 1, 0)
    )
    indices = index_grid(image.spatial_shape)
    expected = np.array(
        [reference.TransformContinuousIndexToPhysicalPoint(index.tolist()) for index in indices]
    )
    np.testing.assert_allclose(image.index_to_world(indices), expected, rtol=0, atol=1e-3)
    assert image.modality == "MR"
    assert (
        image.metadata["series_instance_uid"]
        == pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    )


def test_oblique_series_is_not_axis_aligned(hippocampus_mri: Path) -> None:
    # t1post is tilted ~15 degrees about x: a reader that ignored the orientation would pass
    # the hcrop series but fail here.
    image = read_image(hippocampus_mri / "study1" / "t1post")
    assert abs(image.direction[1, 2]) > 0.2
    assert image.spacing_mm[2] == pytest.approx(6.5, abs=1e-3)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("series", SERIES)
def test_dicom_to_nifti_keeps_values_exactly_and_geometry_to_float32(
    hippocampus_mri: Path, series: str, tmp_path: Path
) -> None:
    image = read_image(hippocampus_mri / series)
    written = write_image(image, tmp_path / "volume.nii.gz")
    back = read_image(written)

    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back.numpy(), image.numpy())
    # NIfTI stores the affine as float32: ~1e-7 relative, i.e. < 1e-4 mm for these positions
    indices = index_grid(image.spatial_shape)
    np.testing.assert_allclose(
        back.index_to_world(indices), image.index_to_world(indices), rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
    np.testing.assert_allclose(back.spacing_mm, image.spacing_mm, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_round_trip(hippocampus_mri: Path, suffix: str, tmp_path: Path) -> None:
    image = read_image(hippocampus_mri / "study1" / "t1post")
    written = write_image(image, tmp_path / f"volume{suffix}")
    back = read_image(written)

    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back.numpy(), image.numpy())
    indices = index_grid(image.spatial_shape)
    np.testing.assert_allclose(
        back.index_to_world(indices), image.index_to_world(indices), rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
    if suffix == ".mhd":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.mhd", "volume.zraw"]
    else:
        assert [p.name for p in tmp_path.iterdir()] == [f"volume{suffix}"]


# ----------------------------------------------------------------------------- sorting
def test_sorting_ignores_file_names_and_instance_numbers(hcrop: Path, tmp_path: Path) -> None:
    expected = read_image(hcrop)
    datasets = sorted_datasets(hcrop)
    rng = random.Random(0)
    names = [f"{rng.getrandbits(40):x}.dcm" for _ in datasets]
    numbers = list(range(1, len(datasets) + 1))
    rng.shuffle(numbers)
    target = tmp_path / "shuffled"
    target.mkdir()
    for dataset, name, number in zip(datasets, names, numbers, strict=True):
        dataset.InstanceNumber = number
        dataset.save_as(target / name)
    # the scrambled copy really is out of order both by name and by InstanceNumber
    by_name = [pydicom.dcmread(f).ImagePositionPatient[2] for f in sorted(target.iterdir())]
    assert by_name != sorted(by_name)

    image = read_image(target)
    np.testing.assert_array_equal(image.numpy(), expected.numpy())
    np.testing.assert_allclose(image.origin_mm, expected.origin_mm)
    assert image.same_grid(expected, tolerance_mm=1e-6)


def test_reversed_slice_order_still_reads_ascending(hcrop: Path, tmp_path: Path) -> None:
    """Slices stored head-to-feet sort by position along the normal, like ITK."""
    expected = read_image(hcrop)
    datasets = sorted_datasets(hcrop)
    for dataset, number in zip(datasets, range(len(datasets), 0, -1), strict=True):
        dataset.InstanceNumber = number
        dataset.save_as(tmp_path / f"{number:03d}.dcm")
    image = read_image(tmp_path)
    np.testing.assert_array_equal(image.numpy(), expected.numpy())


# ----------------------------------------------------------------------------- geometry errors
def test_missing_slice_is_refused_then_resampled(hcrop: Path, tmp_path: Path) -> None:
    expected = read_image(hcrop)
    datasets = sorted_datasets(hcrop)
    missing = len(datasets) // 2
    for index, dataset in enumerate(datasets):
        if index != missing:
            dataset.save_as(tmp_path / f"{index}.dcm")

    with pytest.raises(MedlensError, match="non-uniform slice spacing") as error:
        read_image(tmp_path)
    assert "--resample-nonuniform" in str(error.value)
    assert str(tmp_path) in str(error.value)

    with pytest.warns(MedlensWarning, match="non-uniform"):
        image = read_image(tmp_path, resample_nonuniform=True)
    # back on the 1 mm grid of the complete series: the gap is filled by interpolation
    assert image.same_grid(expected, tolerance_mm=1e-6)
    values, original = image.numpy()[0], expected.numpy()[0].astype(np.float32)
    kept = [k for k in range(len(datasets)) if k != missing]
    np.testing.assert_array_equal(values[..., kept], original[..., kept])
    np.testing.assert_allclose(
        values[..., missing], (original[..., missing - 1] + original[..., missing + 1]) / 2
    )


def test_gantry_tilt_is_refused(hcrop: Path, tmp_path: Path) -> None:
    datasets = sorted_datasets(hcrop)
    shift_per_slice = np.tan(np.radians(5.0)) * 1.0  # 5 degrees with 1 mm slices
    for index, dataset in enumerate(datasets):
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + index * shift_per_slice, z]
        dataset.save_as(tmp_path / f"{index}.dcm")
    with pytest.raises(MedlensError, match=r"gantry tilt of 5\.\d+ degrees"):
        read_image(tmp_path)


def test_slight_rounding_of_positions_is_not_tilt(hcrop: Path, tmp_path: Path) -> None:
    datasets = sorted_datasets(hcrop)
    for index, dataset in enumerate(datasets):
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x + 0.0004 * (-1) ** index, y, z]
        dataset.save_as(tmp_path / f"{index}.dcm")
    assert read_image(tmp_path).spatial_shape == read_image(hcrop).spatial_shape


# ----------------------------------------------------------------------------- compression
@pytest.fixture(scope="module")
def hcrop_reference(hcrop: Path) -> np.ndarray:
    return read_image(hcrop).numpy()


@pytest.mark.parametrize(
    "syntax",
    [pydicom.uid.RLELossless, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_lossless_compressed_series_read_identical(
    hcrop: Path, hcrop_reference: np.ndarray, syntax: str, tmp_path: Path
) -> None:
    for file in sorted(hcrop.iterdir()):
        dataset = pydicom.dcmread(file)
        dataset.compress(syntax)
        dataset.save_as(tmp_path / file.name)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax

    image = read_image(tmp_path)
    assert image.metadata["transfer_syntax"] == syntax
    assert image.dtype == hcrop_reference.dtype
    np.testing.assert_array_equal(image.numpy(), hcrop_reference)


@pytest.mark.parametrize(
    "name", ["humans/ctbrain1.dcm", "dicom-cookies/image1.dcm", "dicom-cookies/image3.dcm"]
)
def test_jpeg_baseline_files_decode(shared_data: Path, name: str) -> None:
    path = shared_data / "dicom" / "phi" / name
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    image = read_image(path)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    assert image.array.shape == (3, columns, rows, 1)
    assert image.dtype == np.uint8
    # pydicom's decoder (converted to RGB) is the reference for the pixel values
    np.testing.assert_array_equal(image.numpy()[..., 0].transpose(2, 1, 0), dataset.pixel_array)
    assert image.numpy().std() > 10  # a real picture, not a blank buffer


def test_ct_rescale_slope_and_intercept_are_applied(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "dicom" / "phi" / "humans" / "ctbrain1.dcm"
    source = pydicom.dcmread(path)
    # a grey uncompressed CT slice with a fractional slope: values become float32
    grey = source.pixel_array[..., 0].astype(np.uint16)
    source.PhotometricInterpretation = "MONOCHROME2"
    source.SamplesPerPixel = 1
    source.BitsAllocated = source.BitsStored = 16
    source.HighBit = 15
    source.PixelRepresentation = 0
    source.RescaleSlope, source.RescaleIntercept = "0.5", "-1024"
    if "PlanarConfiguration" in source:
        del source.PlanarConfiguration
    source.PixelData = grey.tobytes()
    source.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    source.save_as(tmp_path / "ct.dcm", enforce_file_format=True)

    image = read_image(tmp_path / "ct.dcm")
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image.numpy()[0, ..., 0].T, grey * 0.5 - 1024)


# ----------------------------------------------------------------------------- multi-frame
def enhanced_from_series(folder: Path, *, frame_order: list[int] | None = None) -> pydicom.Dataset:
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    datasets = [pydicom.dcmread(file) for file in sorted(folder.iterdir())]
    enhanced = LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=99,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    if frame_order is not None:
        rows, columns = int(enhanced.Rows), int(enhanced.Columns)
        frames = np.frombuffer(enhanced.PixelData, dtype=np.int16).reshape(-1, rows, columns)
        per_frame = list(enhanced.PerFrameFunctionalGroupsSequence)
        enhanced.PixelData = frames[frame_order].tobytes()
        enhanced.PerFrameFunctionalGroupsSequence = [per_frame[i] for i in frame_order]
    return enhanced


@pytest.mark.parametrize(
    ("shuffled", "syntax"),
    [(False, None), (True, None), (True, pydicom.uid.RLELossless)],
    ids=["as-converted", "shuffled-frames", "shuffled-rle"],
)
def test_enhanced_multiframe_matches_series(
    hcrop: Path, shuffled: bool, syntax: str | None, tmp_path: Path
) -> None:
    expected = read_image(hcrop)
    count = expected.spatial_shape[2]
    order = list(range(count))
    if shuffled:
        random.Random(1).shuffle(order)
    enhanced = enhanced_from_series(hcrop, frame_order=order)
    if syntax is not None:
        enhanced.compress(syntax)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    assert int(pydicom.dcmread(tmp_path / "enhanced.dcm").NumberOfFrames) == count

    image = read_image(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(image.numpy(), expected.numpy())
    assert image.same_grid(expected, tolerance_mm=1e-6)
    np.testing.assert_allclose(image.direction, expected.direction)


# ----------------------------------------------------------------------------- stored bits
def write_ct_slices(folder: Path, *, size: int, signed: bool, slices: int = 6) -> None:
    """12-bit CT slices with junk in the unused high bits (as old scanners put overlays)."""
    from pydicom.dataset import FileMetaDataset

    rng = np.random.default_rng(3)
    series, study, frame = (pydicom.uid.generate_uid() for _ in range(3))
    for k in range(slices):
        if signed:
            values = rng.integers(-2048, 2048, size=(size, size)).astype(np.int16)
            junk = (rng.random((size, size)) < 0.2).astype(np.int16) << 13
            stored = (values.view(np.uint16) & 0x0FFF | junk.view(np.uint16)).view(np.int16)
        else:
            values = rng.integers(0, 4096, size=(size, size)).astype(np.uint16)
            stored = values | ((rng.random((size, size)) < 0.2).astype(np.uint16) << 14)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.ImagePositionPatient = [-100.0, -100.0, 20.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.8, 0.8]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0" if signed else "-1024"
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("size", [32, 96], ids=["parsed-pixels", "deferred-pixels"])
def test_bits_above_bits_stored_are_ignored(signed: bool, size: int, tmp_path: Path) -> None:
    """Matches pydicom's decoding + modality LUT (masking / sign extension of 12-bit data)."""
    from pydicom.pixels import apply_modality_lut

    write_ct_slices(tmp_path, size=size, signed=signed)
    image = read_image(tmp_path)
    assert image.dtype == np.int16
    for k, dataset in enumerate(sorted_datasets(tmp_path)):
        expected = apply_modality_lut(dataset.pixel_array, dataset)
        np.testing.assert_array_equal(image.numpy()[0, :, :, k].T, expected)
    assert image.numpy().min() >= (-2048 if signed else -1024)
    assert image.numpy().max() <= (2047 if signed else 3071)
