"""`medlens info` and `medlens convert` on real data, and every kind of bad input.

A user error prints exactly one line on stderr (``error: FILE: what is wrong; what to do``),
exits with code 2, shows no traceback (unless ``--debug``) and leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medlens.cli import main
from medlens.io import read_image, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dicom_data(shared_data: Path) -> Path:
    folder = shared_data / "dicom"
    if not (folder / "hippocampus-mri").is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


@pytest.fixture(scope="module")
def hcrop(dicom_data: Path) -> Path:
    return dicom_data / "hippocampus-mri" / "study1" / "hcrop"


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2, one line, no traceback, and the line names what the test expects."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "leftover (temp) files"


def truncated_copy(source: Path, target: Path, *, keep: int) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[:keep] if keep > 0 else data[:keep])
    return target


# ----------------------------------------------------------------------------- info
def test_info_shows_geometry_without_identity(hcrop: Path, capsys) -> None:
    code, out, err = run(["info", hcrop], capsys)
    assert code == 0, err
    assert "(1, 35, 51, 32)" in out
    assert "int16" in out and "MR" in out and "HippoCrop" in out
    assert "Chrisjen" not in out and "Avasarala" not in out and "PGBM-002" not in out


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_info_hides_patient_identity_unless_phi(dicom_data: Path, as_json: bool, capsys) -> None:
    path = dicom_data / "phi" / "humans" / "ctbrain1.dcm"
    header = pydicom.dcmread(path, stop_before_pixels=True)
    identity = [str(header.PatientName).split("^")[0], str(header.PatientID)]
    assert identity == ["SIMPSON", "00007041776"]
    extra = ["--json"] if as_json else []

    code, out, err = run(["info", path, *extra], capsys)
    assert code == 0, err
    assert "CT" in out
    for value in identity + [str(header.PatientBirthDate)]:
        assert value not in out + err
    if as_json:
        assert "patient" not in json.loads(out)

    code, out, err = run(["info", path, "--phi", *extra], capsys)
    assert code == 0, err
    for value in identity:
        assert value in out
    if as_json:
        assert json.loads(out)["patient"]["id"] == "00007041776"


def test_info_lists_the_series_of_a_study_folder(dicom_data: Path, capsys) -> None:
    study = dicom_data / "hippocampus-mri" / "study1"
    code, out, err = run(["info", study], capsys)
    assert code == 0, err
    for sub, files, description in (("hcrop", 32, "HippoCrop"), ("t1post", 22, "T1post")):
        uid = pydicom.dcmread(next((study / sub).iterdir()), stop_before_pixels=True)
        line = next(line for line in out.splitlines() if uid.SeriesInstanceUID in line)
        assert f"{files} files" in line and description in line
    assert "--series" in out
    assert "shape" not in out  # no volume picked yet

    t1post = pydicom.dcmread(next((study / "t1post").iterdir()), stop_before_pixels=True)
    code, out, err = run(["info", study, "--series", t1post.SeriesInstanceUID], capsys)
    assert code == 0, err
    assert "(1, 512, 512, 22)" in out and "T1post" in out


# ----------------------------------------------------------------------------- convert
def test_convert_dicom_to_nifti(hcrop: Path, out: Path, capsys) -> None:
    code, stdout, err = run(["convert", hcrop, out / "hcrop.nii.gz"], capsys)
    assert code == 0, err
    assert "wrote" in stdout
    np.testing.assert_array_equal(
        read_image(out / "hcrop.nii.gz").numpy(), read_image(hcrop).numpy()
    )
    assert sorted(p.name for p in out.iterdir()) == ["hcrop.nii.gz"]


def test_convert_nifti_to_nrrd_real_process(shared_data: Path, out: Path) -> None:
    """The installed entry point (`python -m medlens`) exits 0 and writes the file."""
    source = shared_data / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "medlens", "convert", str(source), str(out / "a.nrrd")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_image(out / "a.nrrd").numpy(), read_image(source).numpy())


# ----------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path: Path, out: Path, capsys) -> None:
    missing = tmp_path / "no-such-scan"
    assert_user_error(*run(["info", missing], capsys)[::2], str(missing), "no such file")
    code, _, err = run(["convert", missing, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(missing), "check the path")
    assert_nothing_written(out)


def test_empty_folder(tmp_path: Path, out: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["convert", empty, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(empty), "folder is empty", "DICOM")
    assert_nothing_written(out)


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nii"])
def test_nifti_without_voxels(tmp_path: Path, out: Path, capsys, name: str) -> None:
    import nibabel as nib

    empty = tmp_path / name
    nib.save(nib.Nifti1Image(np.zeros((0, 20, 10), np.float32), np.eye(4)), str(empty))
    code, _, err = run(["convert", empty, out / "a.nrrd"], capsys)
    assert_user_error(code, err, str(empty), "no voxels")
    assert_nothing_written(out)


def test_text_file_renamed_dcm(tmp_path: Path, out: Path, capsys) -> None:
    fake = tmp_path / "report.dcm"
    fake.write_text("Patient report: no image here\n" * 20)
    code, _, err = run(["convert", fake, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(fake), "not a readable DICOM file", "check that")
    assert_nothing_written(out)


def test_text_file_inside_a_series_is_skipped_with_a_warning(
    hcrop: Path, tmp_path: Path, out: Path, capsys
) -> None:
    series = tmp_path / "series"
    shutil.copytree(hcrop, series, copy_function=shutil.copyfile)
    (series / "notes.txt").write_text("acquired on scanner 2\n")
    code, _, err = run(["convert", series, out / "a.nii.gz"], capsys)
    assert code == 0, err
    assert "warning" in err and "notes.txt" in err


@pytest.mark.parametrize("where", ["header", "pixels-small", "pixels-large"])
def test_truncated_dicom_file(
    dicom_data: Path, where: str, tmp_path: Path, out: Path, capsys
) -> None:
    # hcrop slices are tiny (pixels parsed with the header); t1post slices are 512x512 (pixels
    # read lazily from the file): both paths must notice the missing bytes.
    series = "t1post" if where == "pixels-large" else "hcrop"
    source = sorted((dicom_data / "hippocampus-mri" / "study1" / series).iterdir())[3]
    size = source.stat().st_size
    keep = 1000 if where == "header" else size // 2 if where == "pixels-large" else size - 1500
    broken = truncated_copy(source, tmp_path / "cut.dcm", keep=keep)
    code, _, err = run(["convert", broken, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(broken), "truncated", "again")
    assert_nothing_written(out)


def test_truncated_file_inside_a_series_is_named(
    hcrop: Path, tmp_path: Path, out: Path, capsys
) -> None:
    series = tmp_path / "series"
    shutil.copytree(hcrop, series, copy_function=shutil.copyfile)
    victim = series / "17.dcm"
    truncated_copy(hcrop / "17.dcm", victim, keep=900)
    code, _, err = run(["convert", series, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(victim), "truncated")
    assert_nothing_written(out)


def test_folder_with_two_series_lists_them_and_series_picks_one(
    dicom_data: Path, out: Path, capsys
) -> None:
    study = dicom_data / "hippocampus-mri" / "study1"
    uids = {
        sub: str(pydicom.dcmread(next((study / sub).iterdir())).SeriesInstanceUID)
        for sub in ("hcrop", "t1post")
    }
    code, _, err = run(["convert", study, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(study), "2 series", *uids.values(), "--series")
    assert_nothing_written(out)

    code, _, err = run(["convert", study, out / "t1.nii.gz", "--series", uids["t1post"]], capsys)
    assert code == 0, err
    assert read_image(out / "t1.nii.gz").spatial_shape == (512, 512, 22)

    code, _, err = run(["convert", study, out / "x.nii.gz", "--series", "1.2.3.4"], capsys)
    assert_user_error(code, err, "1.2.3.4", "not found", uids["hcrop"])


def test_nifti_with_nan_warns_with_count_and_converts(tmp_path: Path, out: Path, capsys) -> None:
    values = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    values[1, 2, :5] = np.nan
    source = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), source)

    code, _, err = run(["convert", source, out / "nan.nrrd"], capsys)
    assert code == 0, err
    assert "5 of 336 voxels are NaN" in err and str(source) in err
    back = read_image(out / "nan.nrrd", warn_nan=False).numpy()[0]
    np.testing.assert_array_equal(np.isnan(back), np.isnan(values))

    # the same warning again for a second file in the same process
    code, _, err = run(["info", source], capsys)
    assert code == 0 and "5 of 336 voxels are NaN" in err


def test_four_d_image_refused_as_seg_until_a_channel_is_picked(
    hcrop: Path, tmp_path: Path, out: Path, capsys
) -> None:
    reference = read_image(hcrop)
    values = reference.numpy()[0]
    mask = (values > np.percentile(values, 85)).astype(np.uint8)
    two_channels = reference.with_array(np.stack([mask, 1 - mask]))
    source = write_image(two_channels, tmp_path / "probabilities.nii.gz")

    args = ["convert", source, out / "seg.dcm", "--reference", hcrop, "--labels", "1=bright"]
    code, _, err = run(args, capsys)
    assert_user_error(code, err, str(source), "single-channel", "2 channels", "--channel")
    assert_nothing_written(out)

    code, _, err = run([*args, "--channel", "0"], capsys)
    assert code == 0, err
    seg = read_image(out / "seg.dcm")
    np.testing.assert_array_equal(seg.numpy()[0], mask)
    assert seg.labels == {0: "background", 1: "bright"}

    code, _, err = run(["convert", source, out / "x.nii.gz", "--channel", "2"], capsys)
    assert_user_error(code, err, str(source), "--channel 2 out of range")


def test_volume_to_png_is_refused(hcrop: Path, out: Path, capsys) -> None:
    code, _, err = run(["convert", hcrop, out / "slice.png"], capsys)
    assert_user_error(code, err, "single slice", ".nii.gz")
    assert_nothing_written(out)


def test_output_under_a_regular_file(hcrop: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was expected")
    code, _, err = run(["convert", hcrop, blocker / "ct.nii.gz"], capsys)
    assert_user_error(code, err, "results is a file, not a folder", "choose")
    assert blocker.read_text() == "a file where a folder was expected"


def test_output_in_an_unwritable_folder(hcrop: Path, capsys) -> None:
    # tests run as root, so chmod cannot make a folder unwritable; /proc refuses new files
    code, _, err = run(["convert", hcrop, "/proc/ct.nii.gz"], capsys)
    assert_user_error(code, err, "/proc", "not writable", "choose a writable output location")


def test_existing_output_needs_overwrite(hcrop: Path, out: Path, capsys) -> None:
    target = out / "ct.nii.gz"
    target.write_bytes(b"previous result")
    code, _, err = run(["convert", hcrop, target], capsys)
    assert_user_error(code, err, str(target), "exists", "--overwrite")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz"]

    code, _, err = run(["convert", hcrop, target, "--overwrite"], capsys)
    assert code == 0, err
    assert read_image(target).spatial_shape == (35, 51, 32)
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz"]


def test_overwrite_never_replaces_the_input_images(tmp_path: Path, capsys) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    frame = frames / "frame.png"
    cv2.imwrite(str(frame), np.full((32, 48, 3), 90, np.uint8))
    before = frame.read_bytes()
    for command in (
        ["preprocess", frames, frames, "--pipeline", "endoscopy", "--overwrite"],
        ["convert", frame, frame, "--overwrite"],
    ):
        code, _, err = run(command, capsys)
        assert_user_error(code, err, "would replace an input", "apart from the inputs")
    assert frame.read_bytes() == before


def test_non_uniform_series_through_the_cli(hcrop: Path, tmp_path: Path, out: Path, capsys) -> None:
    series = tmp_path / "gap"
    shutil.copytree(hcrop, series, copy_function=shutil.copyfile)

    def distance_to_middle(file: Path) -> float:
        return abs(float(pydicom.dcmread(file).ImagePositionPatient[2]) - 16)

    middle = min(series.iterdir(), key=distance_to_middle)  # an inner slice, not an end
    middle.unlink()
    code, _, err = run(["convert", series, out / "a.nii.gz"], capsys)
    assert_user_error(code, err, str(series), "non-uniform", "--resample-nonuniform")
    code, _, err = run(["convert", series, out / "a.nii.gz", "--resample-nonuniform"], capsys)
    assert code == 0, err
    assert "warning" in err and "resampled" in err
    assert read_image(out / "a.nii.gz").spatial_shape == (35, 51, 32)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    plain = subprocess.run(
        [sys.executable, "-m", "medlens", "info", missing], capture_output=True, text=True
    )
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"error: {missing}: no such file or folder; check the path"
    ]
    debug = subprocess.run(
        [sys.executable, "-m", "medlens", "--debug", "info", missing],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "MedlensError" in debug.stderr
