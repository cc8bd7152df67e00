"""Writers never leave half a file: a crash mid-write leaves neither output nor temp file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io import read_image, write_image
from medlens.io.atomic import atomic_output


def small_image() -> Image:
    values = np.arange(4 * 5 * 6, dtype=np.int16).reshape(1, 4, 5, 6)
    return Image(values, spacing_mm=(0.5, 0.6, 2.0), origin_mm=(10, -20, 5))


def test_crash_inside_atomic_output_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "result.nii.gz"
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_bytes(b"half a volume")
        assert temporary.parent == tmp_path and temporary != target
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("suffix", "module", "function"),
    [(".nii.gz", nib, "save"), (".nrrd", sitk, "WriteImage"), (".mhd", sitk, "WriteImage")],
)
def test_writer_crash_keeps_the_previous_file(
    suffix: str, module: object, function: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / f"volume{suffix}"
    write_image(small_image(), target)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    real = getattr(module, function)

    def crash_half_way(image: object, filename: object, *args: object) -> None:
        real(image, filename, *args)  # the bytes reach the temp file...
        raise OSError("No space left on device")  # ...then the writer fails

    monkeypatch.setattr(module, function, crash_half_way)
    changed = small_image().with_array(small_image().numpy() * 2)
    with pytest.raises(OSError, match="No space left"):
        write_image(changed, target, overwrite=True)
    monkeypatch.undo()
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before
    np.testing.assert_array_equal(read_image(target).numpy(), small_image().numpy())


def test_unknown_output_format_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(MedlensError, match="cannot write format '.xyz'"):
        write_image(small_image(), tmp_path / "volume.xyz")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    import os
    import stat

    with atomic_output(tmp_path / "out.txt") as temporary:
        temporary.write_text("x")
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
