"""``medlens deid``: de-identify a DICOM file, a folder tree, or a mix with NIfTI/NRRD.

:func:`deidentify` walks the input, writes de-identified copies under names derived from
pseudonymised UIDs (``OUT/<study>/<series>/<instance>.dcm``; NIfTI/NRRD under
``OUT/volumes/<keyed hash>.nii.gz``), and an audit log ``OUT/deid_audit.jsonl`` with one JSON
line per input file: what was removed, emptied, replaced, cleaned or kept (attribute names),
pixel regions blanked, and keyed hashes instead of any original value.

Bad input: non-DICOM files are listed and never copied; corrupt DICOM files and images with
burned-in text that could not be blanked are listed and skipped (the CLI then exits with 1);
OUT inside IN (or equal) and a missing or short key are refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output
from medlens.privacy.annex_e import Profile
from medlens.privacy.dicom_deid import BurnedInRefused, DicomDeidentifier, new_file_meta
from medlens.privacy.headers import clean_nifti, clean_nrrd
from medlens.privacy.keys import load_key

AUDIT_NAME = "deid_audit.jsonl"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd",)


@dataclasses.dataclass
class DeidReport:
    """Outcome of one run: relative input paths by category (inputs only; never copied)."""

    written: list[Path] = dataclasses.field(default_factory=list)
    non_dicom: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    audit_log: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.refused


def check_paths(source: Path, output: Path) -> tuple[Path, Path]:
    source, output = Path(source), Path(output)
    if not source.exists():
        raise MedlensError("input not found", path=source)
    src, out = source.resolve(), output.resolve()
    if out == src:
        raise MedlensError("output equals input", path=output, hint="choose a separate folder")
    if src.is_dir() and out.is_relative_to(src):
        raise MedlensError(
            "output folder is inside the input folder",
            path=output,
            hint="choose a folder outside the input tree",
        )
    if out.exists() and not out.is_dir():
        raise MedlensError("output exists and is not a folder", path=output)
    return source, output


def _files(source: Path) -> Iterator[Path]:
    if source.is_file():
        yield source
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            yield path


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def deidentify(
    source: str | Path,
    output: str | Path,
    *,
    key_file: str | Path,
    profile: str | Profile = "research",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DeidReport:
    """De-identify ``source`` (file or folder) into the folder ``output``.

    ``workers`` > 1 processes files in that many processes (each file is independent: UIDs,
    pseudonyms and date offsets are keyed functions of the originals, no shared state).

    Example (shell): ``medlens deid dicoms/ deid_out/ --key-file deid.key --profile research``.
    """
    source, output = check_paths(Path(source), Path(output))
    key = load_key(key_file)
    chosen = profile if isinstance(profile, Profile) else Profile.parse(profile)
    report = DeidReport()
    root = source if source.is_dir() else source.parent
    files = list(_files(source))
    output.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    jobs = [(path, path.relative_to(root).as_posix(), output) for path in files]
    if workers > 1 and len(files) > 1:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(key, chosen),
        )
        with pool:
            results = pool.map(_worker_job, jobs, chunksize=8)
            _collect(results, report, lines, progress, len(files))
    else:
        engine = DicomDeidentifier(key, chosen)
        results = (_process(engine, *job) for job in jobs)
        _collect(results, report, lines, progress, len(files))
    with atomic_output(output / AUDIT_NAME) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    report.audit_log = output / AUDIT_NAME
    return report


_WORKER_ENGINE: list[DicomDeidentifier] = []  # one engine per worker process (its caches)


def _init_worker(key: bytes, profile: Profile) -> None:
    _WORKER_ENGINE[:] = [DicomDeidentifier(key, profile)]


def _worker_job(job: tuple[Path, str, Path]) -> tuple[str, str, str, dict[str, Any]]:
    return _process(_WORKER_ENGINE[0], *job)


def _collect(
    results: Iterable[tuple[str, str, str, dict[str, Any]]],
    report: DeidReport,
    lines: list[str],
    progress: Callable[[int, int], None] | None,
    total: int,
) -> None:
    for index, (kind, relative, target, entry) in enumerate(results):
        if kind in ("dicom", "volume"):
            report.written.append(Path(target))
        elif kind == "not dicom":
            report.non_dicom.append(relative)
        elif kind == "refused":
            report.refused.append((relative, entry["reason"]))
        else:
            report.corrupt.append((relative, entry["reason"]))
        lines.append(json.dumps(entry, sort_keys=True))
        if progress is not None:
            progress(index + 1, total)


def _process(
    engine: DicomDeidentifier, path: Path, relative: str, output: Path
) -> tuple[str, str, str, dict[str, Any]]:
    """(kind, relative input, output path or "", audit entry) for one input file."""
    entry: dict[str, Any] = {"input": engine.keys.keyed_hash(relative)}
    suffix = _suffix(path)
    try:
        if suffix in _NIFTI_SUFFIXES or suffix in _NRRD_SUFFIXES:
            nifti = suffix in _NIFTI_SUFFIXES
            name = engine.keys.file_stem(relative) + (".nii.gz" if nifti else ".nrrd")
            target = output / "volumes" / name
            cleaned = (clean_nifti if nifti else clean_nrrd)(path, target)
            entry.update(
                kind="volume", output=target.relative_to(output).as_posix(), cleaned=cleaned
            )
            return "volume", relative, str(target), entry
        written = _deid_dicom(engine, path, output, suffix, entry)
        if written is None:
            entry.update(kind="not dicom", output=None)
            return "not dicom", relative, "", entry
        return "dicom", relative, str(written), entry
    except BurnedInRefused as error:
        entry.update(kind="refused", reason=str(error), output=None)
        return "refused", relative, "", entry
    except MedlensError as error:
        entry.update(kind="corrupt", reason=error.message, output=None)
        return "corrupt", relative, "", entry


def _read_dicom(path: Path, suffix: str) -> pydicom.Dataset | None:
    """The dataset, or None for a file that is not DICOM; MedlensError for a corrupt one."""
    with warnings.catch_warnings():
        # over-long values etc. in the source are common and get removed or kept as they are
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        return _read_dicom_checked(path, suffix)


def _read_dicom_checked(path: Path, suffix: str) -> pydicom.Dataset | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as error:
        raise MedlensError(f"cannot read ({error.strerror})", path=path) from None
    looks_dicom = head[128:132] == b"DICM" or suffix in _DICOM_SUFFIXES
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if looks_dicom:
            raise MedlensError("corrupt DICOM (invalid header)", path=path) from None
        return None
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on damaged files
        if looks_dicom:
            raise MedlensError(f"corrupt DICOM ({type(error).__name__})", path=path) from None
        return None
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        if not looks_dicom:
            return None
        raise MedlensError("corrupt DICOM (no SOP Instance/Class UID)", path=path)
    # Type 1 in every composite object, and the output's folder names: a header cut short
    # (a truncated copy) can hold the SOP UIDs of its first bytes but not these
    missing = [key for key in ("StudyInstanceUID", "SeriesInstanceUID") if key not in ds]
    if missing:
        raise MedlensError(
            f"corrupt DICOM (no {' or '.join(missing)}; the file may be truncated)", path=path
        )
    _check_pixel_length(ds, path)
    return ds


def _check_pixel_length(ds: pydicom.Dataset, path: Path) -> None:
    if "PixelData" not in ds:
        return
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            fragments = list(
                pydicom.encaps.generate_frames(
                    ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)
                )
            )
            if not fragments or not all(fragments):
                raise ValueError("empty frame")
            return
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.SamplesPerPixel)
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
        ) // 8
        if len(ds.PixelData) < expected:
            raise ValueError(f"{len(ds.PixelData)} of {expected} bytes")
    except Exception as error:  # noqa: BLE001
        raise MedlensError(f"corrupt DICOM pixel data ({error})", path=path) from None


def _deid_dicom(
    engine: DicomDeidentifier, path: Path, output: Path, suffix: str, entry: dict[str, Any]
) -> Path | None:
    ds = _read_dicom(path, suffix)
    if ds is None:
        return None
    if ds.file_meta.get("MediaStorageSOPClassUID") == pydicom.uid.MediaStorageDirectoryStorage:
        return None  # DICOMDIR: lists identities; regenerate it after de-identification
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        return _deid_dataset(engine, ds, path, output, entry)


def _deid_dataset(
    engine: DicomDeidentifier, ds: pydicom.Dataset, path: Path, output: Path, entry: dict[str, Any]
) -> Path:
    try:
        audit = engine.apply(ds)
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise MedlensError(f"corrupt DICOM header ({type(error).__name__})", path=path) from None
    if engine.needs_pixel_check(ds):
        engine.scrub_pixels(ds, audit)
    ds.file_meta = new_file_meta(ds, ds.file_meta.TransferSyntaxUID)
    target = output / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    with atomic_output(target) as temporary:
        ds.save_as(temporary, enforce_file_format=True)
    entry.update(kind="dicom", output=target.relative_to(output).as_posix(), **audit.as_json())
    return target
