"""Run a pipeline on a file or a folder of images (what ``medlens preprocess`` does)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from medlens.errors import MedlensError, failed_inputs_error, warn_unread_subfolders
from medlens.io.atomic import full_suffix, refuse_replacing_inputs
from medlens.preprocess.atomic_text import write_text_atomic
from medlens.preprocess.pipeline import Pipeline

_IMAGE_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
)


def image_files(folder: Path) -> list[Path]:
    """Image files (by suffix) anywhere under ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and full_suffix(p) in _IMAGE_SUFFIXES)


def plan_outputs(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file, a DICOM series folder, or a folder of images."""
    if not source.exists():
        raise MedlensError("no such file or folder", path=source, hint="check the path")
    files = image_files(source) if source.is_dir() else []
    if source.is_dir() and files:
        if output.exists() and not output.is_dir():
            raise MedlensError("output must be a folder when the input is a folder", path=output)
        # image files are found at any depth; DICOM slices are not read one by one
        series = sorted({str(p.parent.relative_to(source)) for p in source.rglob("*.dcm")})
        warn_unread_subfolders(source, series, what="folder(s) of DICOM files")
        return [(f, output / f.relative_to(source)) for f in files]
    if full_suffix(output) == "" or output.is_dir():
        name = source.name if source.is_file() else f"{source.name}.nii.gz"
        if source.is_file() and full_suffix(source) == ".dcm":
            name = source.stem + ".nii.gz"
        return [(source, output / name)]
    return [(source, output)]


def preprocess_path(
    source: str | Path,
    output: str | Path,
    pipeline: Pipeline,
    *,
    overwrite: bool = False,
    on_progress: Callable[[int, int, Path], None] | None = None,
) -> list[Path]:
    """Apply ``pipeline`` to every image and write results plus ``provenance.json``.

    Every file is written atomically; existing outputs are an error unless ``overwrite``
    (checked for all files before any work starts). In a folder, an image that cannot be read
    or processed does not stop the others: they are written, with the provenance, and then
    one error names every failed image.
    """
    from medlens.io import read_image, write_image

    source, output = Path(source), Path(output)
    pairs = plan_outputs(source, output)
    refuse_replacing_inputs([path_in for path_in, _ in pairs], [path_out for _, path_out in pairs])
    if not overwrite:
        existing = [str(out) for _, out in pairs if out.exists()]
        if existing:
            raise MedlensError(
                f"{len(existing)} output file(s) exist, e.g. {existing[0]}",
                hint="pass --overwrite to replace them",
            )
    provenance: dict[str, object] = {"pipeline": pipeline.to_dict(), "images": {}}
    written = []
    failed: list[MedlensError] = []
    for index, (path_in, path_out) in enumerate(pairs):
        try:
            image = pipeline(read_image(path_in))
        except MedlensError as error:
            if len(pairs) == 1:
                raise
            failed.append(error)
            continue
        write_image(image, path_out, overwrite=True)
        provenance["images"][str(path_out)] = {  # type: ignore[index]
            "source": str(path_in),
            "steps": image.metadata.get("provenance", []),
            "shape": list(image.array.shape),
            "spacing_mm": [float(v) for v in image.spacing_mm],
        }
        written.append(path_out)
        if on_progress is not None:
            on_progress(index + 1, len(pairs), path_in)
    if written:
        folder = output if output.is_dir() else None
        record_path = (
            folder / "provenance.json"
            if folder is not None
            else written[0].with_name(written[0].name + ".provenance.json")
        )
        write_text_atomic(record_path, json.dumps(provenance, indent=1, default=str))
    if failed:
        raise failed_inputs_error(failed, total=len(pairs), task="preprocessed")
    return written
