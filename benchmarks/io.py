"""Read speed and peak memory: medlens vs SimpleITK vs nibabel on a 512x512x300 CT volume.

Generates (in a temp folder) an uncompressed 300-slice CT DICOM series with realistic headers
(12-bit unsigned pixels, RescaleIntercept -1024, as most CT scanners write) and the same volume
as NIfTI (.nii and .nii.gz). Each reader runs in a fresh Python subprocess per repeat, so peak
memory is that process's peak RSS (VmHWM, reset after imports) minus its RSS just before the read
(libraries already imported); time is the median wall time of the read over the repeats. The
page cache is warm for everyone (files are read once before timing).

Usage::

    python benchmarks/io.py                      # writes benchmarks/results/io.md
    python benchmarks/io.py --slices 60 --repeats 2 --out /tmp/io.md   # quick check
    python benchmarks/io.py --pause-background   # SIGSTOP medlens_train_bg jobs while timing
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from background import paused_background

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data
def phantom(rows: int, columns: int, slices: int) -> np.ndarray:
    """Stored (unsigned 12-bit) CT values: a body ellipse, bone ring, organs and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    volume = np.empty((slices, rows, columns), np.uint16)
    for k in range(slices):
        scale = 1.0 - 0.3 * abs(k - slices / 2) / slices
        body = ((x - cx) / (0.42 * columns * scale)) ** 2 + ((y - cy) / (0.33 * rows * scale)) ** 2
        hu = np.full((rows, columns), -1000.0, np.float32)
        hu[body <= 1] = 40.0
        hu[(body > 0.85) & (body <= 1)] = 700.0
        organ = ((x - cx * 0.8) / 40) ** 2 + ((y - cy) / 55) ** 2 <= 1
        hu[organ] = 60.0 + 5 * np.sin(k / 10)
        hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
        volume[k] = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    return volume


def write_ct_series(volume: np.ndarray, folder: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    slices, rows, columns = volume.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing, thickness = 0.7421875, 1.25
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240105"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.AcquisitionTime = ds.ContentTime = f"1016{k % 60:02d}"
        ds.AccessionNumber = "A123456"
        ds.Modality = "CT"
        ds.Manufacturer = "SIEMENS"
        ds.InstitutionName = "Benchmark Hospital"
        ds.ReferringPhysicianName = ""
        ds.StationName = "CT01"
        ds.StudyDescription = "CT ABDOMEN W CONTRAST"
        ds.SeriesDescription = "Abdomen 1.25mm"
        ds.ManufacturerModelName = "SOMATOM Definition AS"
        ds.PatientName = "Benchmark^Patient"
        ds.PatientID = "BENCH001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.PatientAge = "064Y"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = str(thickness)
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.SoftwareVersions = "syngo CT VA48A"
        ds.ReconstructionDiameter = "380"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "160"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = "240"
        ds.Exposure = "120"
        ds.ConvolutionKernel = "B30f"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 3
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-190.0, -190.0 + 0.0, -50.0 - k * thickness]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = str(-50.0 - k * thickness)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [spacing, spacing]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = volume[k].tobytes()
        # file names in acquisition order but not zero padded (1.dcm, 10.dcm, 100.dcm, ...)
        ds.save_as(folder / f"{k + 1}.dcm", enforce_file_format=True)


def write_nifti(volume: np.ndarray, folder: Path) -> tuple[Path, Path]:
    import nibabel as nib

    hu = (volume.astype(np.int16) - 1024).transpose(2, 1, 0)  # (I, J, K)
    affine = np.diag([-0.7421875, -0.7421875, 1.25, 1.0])
    nifti = nib.Nifti1Image(np.ascontiguousarray(hu), affine)
    plain, gzipped = folder / "ct.nii", folder / "ct.nii.gz"
    nib.save(nifti, plain)
    nib.save(nifti, gzipped)
    return plain, gzipped


# ----------------------------------------------------------------------------- readers
# Each snippet reads PATH into `array` (any layout); imports happen before the baseline.
READERS = {
    "medlens read_image": (
        "from medlens.io import read_image",
        "array = read_image(PATH).numpy()",
    ),
    "SimpleITK ImageSeriesReader": (
        "import SimpleITK as sitk",
        "reader = sitk.ImageSeriesReader()\n"
        "reader.SetFileNames(reader.GetGDCMSeriesFileNames(PATH))\n"
        "image = reader.Execute()  # keep a reference: the array is a view of it\n"
        "array = sitk.GetArrayViewFromImage(image)",
    ),
    "SimpleITK ReadImage": (
        "import SimpleITK as sitk",
        "image = sitk.ReadImage(PATH)\narray = sitk.GetArrayViewFromImage(image)",
    ),
    "nibabel": (
        "import nibabel as nib\nimport numpy as np",
        "array = np.asanyarray(nib.load(PATH).dataobj)",
    ),
}

CHILD = """
import time, json, sys, os
import numpy as np
{imports}
PATH = {path!r}


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


# Reset this process's peak-RSS mark (VmHWM) so the peak below is the read's alone;
# getrusage's ru_maxrss would also count the parent's RSS inherited across fork/exec.
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
rss_before = status("VmRSS")
start = time.perf_counter()
{read}
seconds = time.perf_counter() - start
peak = status("VmHWM")
checksum = float(np.asarray(array).sum(dtype=np.float64)) if {checksum} else 0.0
print(json.dumps({{"seconds": seconds, "rss_before": rss_before, "peak": peak,
    "nbytes": int(np.asarray(array).nbytes), "dtype": str(np.asarray(array).dtype),
    "shape": list(np.asarray(array).shape), "checksum": checksum}}))
"""


def run_reader(name: str, path: Path, *, checksum: bool) -> dict:
    imports, read = READERS[name]
    code = CHILD.format(imports=imports, read=read, path=str(path), checksum=checksum)
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed on {path}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(readers: list[str], path: Path, repeats: int) -> list[dict]:
    """Run the readers in turns (A B C A B C ...) so that load changes hit all of them alike."""
    runs: dict[str, list[dict]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name in readers:
            runs[name].append(run_reader(name, path, checksum=False))
    rows = []
    for name in readers:
        check = run_reader(name, path, checksum=True)  # outside timing: do values agree?
        peak_delta = [r["peak"] - r["rss_before"] for r in runs[name]]
        rows.append(
            {
                "reader": name,
                "seconds_median": statistics.median(r["seconds"] for r in runs[name]),
                "seconds_all": [round(r["seconds"], 3) for r in runs[name]],
                "peak_mib": statistics.median(peak_delta) / 2**20,
                "array_mib": runs[name][0]["nbytes"] / 2**20,
                "dtype": runs[name][0]["dtype"],
                "shape": runs[name][0]["shape"],
                "checksum": check["checksum"],
            }
        )
    return rows


# ----------------------------------------------------------------------------- machine load
def machine_load() -> tuple[float, list[str]]:
    """System CPU % over 2 s and the processes (other than us) using > 20 % of a core."""
    import psutil

    processes = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    total = psutil.cpu_percent(interval=2.0)
    busy = []
    for process in processes:
        try:
            usage = process.cpu_percent(None)
        except psutil.Error:
            continue
        if usage > 20 and process.pid != os.getpid():
            command = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])
            busy.append(f"pid {process.pid} {usage:.0f}% {command[:80]}")
    return total, busy


# ----------------------------------------------------------------------------- report
def write_report(results: list[dict], conditions: dict, out: Path) -> None:
    lines = [
        "# I/O benchmark: reading a CT volume",
        "",
        f"Generated by `python benchmarks/io.py` on {conditions['date']} UTC.",
        "",
        "## Conditions",
        "",
        f"- volume: {conditions['shape']} int16 CT (12-bit stored, intercept -1024), "
        f"{conditions['slices']} uncompressed DICOM files (Explicit VR Little Endian) and the "
        "same volume as NIfTI",
        f"- machine: {conditions['machine']}",
        f"- idle: {conditions['idle']}",
        f"- each reader runs in a fresh subprocess per repeat; time = median of "
        f"{conditions['repeats']} reads (warm page cache), memory = median of peak RSS minus "
        "RSS just before the read (imports excluded)",
        "- ratio to SimpleITK < 1 means faster than SimpleITK; memory multiple = peak / "
        "final array bytes",
        "",
    ]
    for source in ("DICOM series", "NIfTI .nii", "NIfTI .nii.gz"):
        rows = [r for r in results if r["source"] == source]
        if not rows:
            continue
        sitk_row = next((r for r in rows if r["reader"].startswith("SimpleITK")), None)
        lines += [
            f"## {source}",
            "",
            "| reader | wall time (s, median) | runs (s) | time / SimpleITK | peak memory (MiB) "
            "| memory / array | output |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for row in rows:
            ratio = row["seconds_median"] / sitk_row["seconds_median"] if sitk_row else float("nan")
            lines.append(
                f"| {row['reader']} | {row['seconds_median']:.3f} | "
                f"{', '.join(f'{s:.2f}' for s in row['seconds_all'])} | {ratio:.2f} | "
                f"{row['peak_mib']:.0f} | {row['peak_mib'] / row['array_mib']:.2f} | "
                f"{row['dtype']} {tuple(row['shape'])} |"
            )
        checksums = {row["reader"]: row["checksum"] for row in rows}
        agree = len({round(value, 3) for value in checksums.values()}) == 1
        lines += ["", f"Values agree across readers (sum of voxels): {agree}.", ""]
    medlens = next(r for r in results if r["source"] == "DICOM series" and "medlens" in r["reader"])
    sitk_row = next(
        r for r in results if r["source"] == "DICOM series" and r["reader"].startswith("SimpleITK")
    )
    speed_ok = medlens["seconds_median"] <= sitk_row["seconds_median"]
    memory_ok = medlens["peak_mib"] / medlens["array_mib"] <= 1.2
    lines += [
        "## Targets (DICOM series)",
        "",
        f"- medlens at least as fast as SimpleITK: **{'met' if speed_ok else 'NOT met'}** "
        f"({medlens['seconds_median']:.3f} s vs {sitk_row['seconds_median']:.3f} s)",
        f"- peak memory <= 1.2x the final array: **{'met' if memory_ok else 'NOT met'}** "
        f"({medlens['peak_mib'] / medlens['array_mib']:.2f}x of {medlens['array_mib']:.0f} MiB)",
        "",
    ]
    if conditions.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in conditions["notes"]] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.partial")
    temporary.write_text("\n".join(lines))
    os.replace(temporary, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "io.md")
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated data here")
    parser.add_argument(
        "--pause-background",
        action="store_true",
        help="SIGSTOP processes matching medlens_train_bg while timing (SIGCONT afterwards)",
    )
    parser.add_argument("--only", choices=["dicom", "nifti"], help="run one source kind only")
    parser.add_argument("--note", action="append", default=[], help="extra line for the report")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medlens-io-bench-"))
    dicom_folder = workdir / "ct-series"
    started = time.perf_counter()
    if not (dicom_folder.is_dir() and len(list(dicom_folder.iterdir())) == args.slices):
        volume = phantom(args.size, args.size, args.slices)
        write_ct_series(volume, dicom_folder)
        write_nifti(volume, workdir)
        del volume
    print(f"data in {workdir} ({time.perf_counter() - started:.1f} s)", flush=True)
    for file in [*dicom_folder.iterdir(), workdir / "ct.nii", workdir / "ct.nii.gz"]:
        file.read_bytes()  # warm the page cache for everyone

    with paused_background(args.pause_background) as paused:
        load, busy = machine_load()
        plan = [
            ("DICOM series", dicom_folder, ["medlens read_image", "SimpleITK ImageSeriesReader"]),
            (
                "NIfTI .nii",
                workdir / "ct.nii",
                ["medlens read_image", "SimpleITK ReadImage", "nibabel"],
            ),
            (
                "NIfTI .nii.gz",
                workdir / "ct.nii.gz",
                ["medlens read_image", "SimpleITK ReadImage", "nibabel"],
            ),
        ]
        if args.only:
            plan = [item for item in plan if item[0].lower().startswith(args.only)]
        results = []
        for source, path, readers in plan:
            for row in measure(readers, path, args.repeats):
                row["source"] = source
                results.append(row)
                print(
                    f"{source:14s} {row['reader']:30s} {row['seconds_median']:.3f} s "
                    f"{row['peak_mib']:.0f} MiB (array {row['array_mib']:.0f} MiB)",
                    flush=True,
                )
        load_after, busy_after = machine_load()

    idle = (
        f"CPU {load:.0f}% busy before and {load_after:.0f}% after the runs (2 s samples over "
        f"{os.cpu_count()} cores); paused medlens_train_bg processes: {paused or 'none found'}"
    )
    others = sorted(set(busy) | set(busy_after))
    idle += "; other busy processes: " + ("; ".join(others) if others else "none")
    conditions = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "shape": f"{args.size}x{args.size}x{args.slices}",
        "slices": args.slices,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "idle": idle,
        "notes": args.note,
    }
    write_report(results, conditions, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
