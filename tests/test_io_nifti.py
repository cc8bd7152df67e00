"""NIfTI reading equals nibabel's (arrays and affines), including sform/qform choice."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlens.errors import MedlensError, MedlensWarning
from medlens.io import read_image, write_image

CASES = ["hippocampus_001", "hippocampus_017", "hippocampus_101", "hippocampus_204"]


@pytest.fixture(scope="module")
def hippocampus(shared_data: Path) -> Path:
    folder = shared_data / "hippocampus"
    if not (folder / "imagesTr").is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


def existing_cases(folder: Path) -> list[str]:
    names = [name for name in CASES if (folder / "imagesTr" / f"{name}.nii.gz").exists()]
    if len(names) < 2:
        names = sorted(p.name[: -len(".nii.gz")] for p in (folder / "imagesTr").glob("*.nii.gz"))
    return names[:4]


@pytest.mark.parametrize("kind", ["imagesTr", "labelsTr"])
def test_arrays_and_affines_equal_nibabel(hippocampus: Path, kind: str) -> None:
    for name in existing_cases(hippocampus):
        path = hippocampus / kind / f"{name}.nii.gz"
        expected = nib.load(path)
        image = read_image(path)

        data = np.asanyarray(expected.dataobj)
        assert image.dtype == data.dtype
        np.testing.assert_array_equal(image.numpy()[0], data)
        np.testing.assert_allclose(image.affine_ras, expected.affine, rtol=0, atol=1e-6)
        # and the LPS affine is the RAS one with x and y negated
        np.testing.assert_allclose(image.affine[:2], -expected.affine[:2], rtol=0, atol=1e-6)
        if kind == "labelsTr":
            assert set(np.unique(image.numpy())) <= {0, 1, 2}


def test_world_position_of_a_voxel_matches_nibabel(hippocampus: Path) -> None:
    path = hippocampus / "imagesTr" / f"{existing_cases(hippocampus)[0]}.nii.gz"
    expected = nib.load(path)
    image = read_image(path)
    index = np.array([3.0, 7.0, 11.0])
    ras = nib.affines.apply_affine(expected.affine, index)
    np.testing.assert_allclose(image.index_to_world(index), ras * [-1, -1, 1], atol=1e-6)


def oblique_affine() -> np.ndarray:
    angle = np.radians(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


@pytest.mark.parametrize("form", ["sform-only", "qform-only", "both-differ"])
def test_sform_and_qform_resolved_like_nibabel(
    hippocampus: Path, form: str, tmp_path: Path
) -> None:
    source = nib.load(hippocampus / "imagesTr" / f"{existing_cases(hippocampus)[0]}.nii.gz")
    data = np.asanyarray(source.dataobj)
    nifti = nib.Nifti1Image(data, None)
    if form == "sform-only":
        nifti.set_sform(oblique_affine(), code=2)
        nifti.set_qform(None, code=0)
    elif form == "qform-only":
        nifti.set_qform(oblique_affine(), code=1)
        nifti.set_sform(None, code=0)
    else:  # nibabel (and the NIfTI standard's common reading) prefer the sform
        nifti.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
        nifti.set_sform(oblique_affine(), code=1)
    path = tmp_path / f"{form}.nii.gz"
    nib.save(nifti, path)

    expected = nib.load(path).affine
    image = read_image(path)
    np.testing.assert_allclose(image.affine_ras, expected, atol=1e-5)
    np.testing.assert_allclose(image.affine_ras, oblique_affine(), atol=1e-5)
    np.testing.assert_array_equal(image.numpy()[0], data)


def test_scaled_nifti_is_read_as_float_values(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nifti = nib.Nifti1Image(data, np.eye(4))
    nifti.header.set_slope_inter(0.5, -3.0)
    nib.save(nifti, tmp_path / "scaled.nii")
    image = read_image(tmp_path / "scaled.nii")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image.numpy()[0], data * 0.5 - 3.0)


def test_nifti_round_trip_keeps_labels_exactly(hippocampus: Path, tmp_path: Path) -> None:
    path = hippocampus / "labelsTr" / f"{existing_cases(hippocampus)[0]}.nii.gz"
    image = read_image(path)
    back = read_image(write_image(image, tmp_path / "labels.nii.gz"))
    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back.numpy(), image.numpy())
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)


def test_nan_voxels_are_counted_in_a_warning(tmp_path: Path) -> None:
    data = np.ones((4, 5, 6), np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(MedlensWarning, match=r"3 of 120 voxels are NaN"):
        image = read_image(tmp_path / "nan.nii.gz")
    assert np.isnan(image.numpy()).sum() == 3


def test_four_d_nifti_becomes_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "two.nii.gz")
    image = read_image(tmp_path / "two.nii.gz")
    assert image.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(image.numpy()[1], data[..., 1])


@pytest.mark.parametrize("decompressor", ["isal", "stdlib-gzip"])
def test_gzipped_voxels_read_straight_into_the_array(
    hippocampus: Path, decompressor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if decompressor == "stdlib-gzip":
        monkeypatch.setitem(sys.modules, "isal", None)  # import fails -> standard gzip
    else:
        pytest.importorskip("isal")
    path = hippocampus / "imagesTr" / f"{existing_cases(hippocampus)[1]}.nii.gz"
    image = read_image(path)
    np.testing.assert_array_equal(image.numpy()[0], np.asanyarray(nib.load(path).dataobj))


def test_truncated_nifti_is_a_clear_error(hippocampus: Path, tmp_path: Path) -> None:
    source = hippocampus / "imagesTr" / f"{existing_cases(hippocampus)[0]}.nii.gz"
    broken = tmp_path / "cut.nii.gz"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(MedlensError, match="cut.nii.gz") as error:
        read_image(broken)
    assert "complete" in str(error.value) or "truncated" in str(error.value)
