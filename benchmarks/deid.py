"""De-identification speed, memory and output validity: medlens deid vs the `deid` package.

Makes a folder of N DICOM files (default 1,000) from the real identity-bearing files in
../shared/data/dicom/phi (CT, ultrasound with burned-in text, 5 secondary captures), each copy
with new Study/Series/SOP Instance UIDs (10 files per series, 5 series per study), then runs on
the same folder, in the same run:

- ``medlens.privacy.deidentify`` (profile ``research``: Annex E Basic + modified dates + clean
  descriptors; keyed pseudonyms/UIDs, burned-in text scrub of the ultrasound copies);
- the ``deid`` package (pydicom/deid) with its default recipe, parsed once:
  ``DeidRecipe()``, ``get_identifiers(files)``, ``replace_identifiers(..., save=True)``.

Each tool runs in a fresh subprocess per folder size (100, 300, N files), so peak memory is that
process's peak RSS (VmHWM) minus its RSS after imports; time is wall time of the call.
Validity: every output file must open in pydicom and hold valid Study/Series/SOP Instance UIDs
equal to the file meta's MediaStorageSOPInstanceUID; we also count outputs still holding
InstitutionName or the original PatientName.

Usage::

    python benchmarks/deid.py                         # writes benchmarks/results/deid.md
    python benchmarks/deid.py --files 200 --out /tmp/deid.md   # quick check
    python benchmarks/deid.py --pause-background      # SIGSTOP medlens_train_bg jobs while timing
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from background import paused_background

ROOT = Path(__file__).resolve().parents[1]
PHI = ROOT.parent / "shared" / "data" / "dicom" / "phi"


def make_folder(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the phi files with fresh UIDs, unique base names (deid flattens)."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted(PHI.rglob("*.dcm"))
    datasets = [pydicom.dcmread(p) for p in sources]
    paths = []
    study = series = ""
    for index in range(count):
        if index % 50 == 0:
            study = generate_uid()
        if index % 10 == 0:
            series = generate_uid()
        ds = datasets[index % len(datasets)]
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = (
            folder / f"study{index // 50:03d}" / f"series{index // 10:04d}" / f"im{index:05d}.dcm"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        paths.append(path)
    return paths


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (worker processes)."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)


def child(tool: str, source: Path, output: Path, key: Path) -> None:
    """Run one tool once in this process; print a JSON line with time and memory."""
    # this file is called deid.py: keep its folder off sys.path or it shadows the deid package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    files = sorted(str(p) for p in source.rglob("*.dcm"))
    if tool.startswith("medlens"):
        from medlens.privacy.deid import deidentify

        workers = 2 if tool.endswith("-2") else 1
        _reset_peak()
        before = _rss_kib("VmRSS")
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        report = deidentify(source, output, key_file=key, profile="research", workers=workers)
        seconds = time.perf_counter() - start
        ok = len(report.written)
    else:
        from deid.config import DeidRecipe
        from deid.dicom import get_identifiers, replace_identifiers

        recipe = DeidRecipe()  # default recipe, parsed once
        output.mkdir(parents=True, exist_ok=True)
        _reset_peak()
        before = _rss_kib("VmRSS")
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        items = get_identifiers(files)
        written = replace_identifiers(
            dicom_files=files,
            deid=recipe,
            ids=items,
            save=True,
            output_folder=str(output),
            overwrite=True,
        )
        seconds = time.perf_counter() - start
        ok = len(written)
    cpu = _cpu_seconds() - cpu_start
    peak = _rss_kib("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "files": len(files),
                "written": ok,
                "peak_mib": (peak - before) / 1024,
            }
        )
    )


def validity(output: Path) -> dict[str, int]:
    import pydicom
    from pydicom.uid import UID

    counts = {"files": 0, "valid_uids": 0, "institution_kept": 0, "unreadable": 0}
    for path in output.rglob("*.dcm"):
        counts["files"] += 1
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            counts["unreadable"] += 1
            continue
        uids = [ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")]
        meta = ds.file_meta.get("MediaStorageSOPInstanceUID")
        if all(u and UID(str(u)).is_valid for u in uids) and meta == uids[2]:
            counts["valid_uids"] += 1
        if ds.get("InstitutionName"):
            counts["institution_kept"] += 1
    return counts


def run_child(tool: str, source: Path, output: Path, key: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, __file__, "--child", tool, str(source), str(output), str(key)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deid.md")
    parser.add_argument("--pause-background", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("TOOL", "IN", "OUT", "KEY"))
    args = parser.parse_args()
    if args.child:
        tool, source, output, key = args.child
        child(tool, Path(source), Path(output), Path(key))
        return
    sizes = sorted({min(100, args.files), min(300, args.files), args.files})
    with tempfile.TemporaryDirectory(prefix="medlens-deid-bench-") as tmp:
        tmp_path = Path(tmp)
        key = tmp_path / "deid.key"
        key.write_bytes(os.urandom(64))
        folders = {}
        for size in sizes:
            folders[size] = tmp_path / f"in{size}"
            make_folder(folders[size], size)
        rows = []
        with paused_background(args.pause_background) as paused:
            load_before = os.getloadavg()[0]
            for size in sizes:
                for tool in ("medlens", "medlens-2", "deid"):
                    output = tmp_path / f"out-{tool}-{size}"
                    measured = run_child(tool, folders[size], output, key)
                    measured.update(tool=tool, size=size, **validity(output))
                    rows.append(measured)
                    print(json.dumps(measured), flush=True)
                    shutil.rmtree(output)
            load_after = os.getloadavg()[0]
        write_report(
            args.out, rows, paused=paused, largest=sizes[-1], load=(load_before, load_after)
        )


def write_report(
    path: Path, rows: list[dict], *, paused: list[int], largest: int, load: tuple[float, float]
) -> None:
    by = {(r["tool"], r["size"]): r for r in rows}

    def rates(tool: str) -> tuple[float, float]:
        row = by[(tool, largest)]
        return row["files"] / row["seconds"], row["files"] / row["cpu_seconds"]

    (ours_wall, ours_cpu), (theirs_wall, theirs_cpu) = rates("medlens"), rates("deid")
    parallel_wall, _ = rates("medlens-2")
    smallest = min(size for _, size in by)

    def growth_mib_per_file(tool: str) -> float:
        low, high = by[(tool, smallest)], by[(tool, largest)]
        return (high["peak_mib"] - low["peak_mib"]) / max(largest - smallest, 1)

    lines = [
        "# De-identification: medlens deid vs the `deid` package",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by "
        "`python benchmarks/deid.py"
        + (" --pause-background`" if paused else "`")
        + f" on {platform.node()} ({os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, CPU only). "
        + (
            f"Background training paused during timing ({len(paused)} processes SIGSTOPped)"
            if paused
            else "Background training NOT paused"
        )
        + f"; 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after the timed runs: "
        "other sessions' processes (test runs of other helpers) still shared the 2 cores, so the "
        "machine was NOT idle and wall-clock files/s are pessimistic and noisy. CPU seconds "
        "(user + system of the tool's process and its workers) are robust to that sharing: the "
        "files per CPU-second columns are the like-for-like comparison.",
        "",
        f"Input: {largest} DICOM files made from the 7 real files in `dicom/phi` (1/7 ultrasound "
        "with burned-in text, 5/7 2048x1536 JPEG secondary captures, 1/7 CT with a full "
        "identity header), fresh UIDs, 10 files per series, 5 series per study. Each tool runs in "
        "a fresh process per folder size; peak memory = peak RSS minus RSS after imports.",
        "",
        "| tool | files | wall s | files/s | CPU s | files per CPU-s | peak MiB over baseline "
        "| valid UIDs | InstitutionName kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "medlens": "medlens (1 process)",
        "medlens-2": "medlens (--workers 2)",
        "deid": "deid 0.4 (default recipe)",
    }
    for row in rows:
        # with workers the parent's RSS says nothing about the workers': not measured
        memory = "n/m" if row["tool"] == "medlens-2" else f"{row['peak_mib']:.0f}"
        lines.append(
            f"| {names[row['tool']]} | {row['size']} | {row['seconds']:.2f} | "
            f"{row['files'] / row['seconds']:.0f} | {row['cpu_seconds']:.2f} | "
            f"{row['files'] / row['cpu_seconds']:.0f} | {memory} | "
            f"{row['valid_uids']}/{row['files']} | {row['institution_kept']} |"
        )
    lines += [
        "",
        f"**On {largest} files, one process each: medlens {ours_cpu:.0f} files per CPU-second vs "
        f"deid {theirs_cpu:.0f} = {ours_cpu / theirs_cpu:.1f}x; wall clock {ours_wall:.0f} vs "
        f"{theirs_wall:.0f} files/s = {ours_wall / theirs_wall:.1f}x.** Target >= 3x (anchor "
        "from the issue: deid 50 files/s on this machine). `--workers 2`: "
        f"{parallel_wall:.0f} files/s wall ({parallel_wall / theirs_wall:.1f}x deid); it is "
        "opt-in (default 1) because with the 2 cores already busy it did not reliably help.",
        "",
        "What the numbers mean:",
        "- medlens writes every output with remapped `2.25.<int>` Study/Series/SOP Instance UIDs "
        "(file meta consistent); deid's default recipe deletes these UIDs without replacing them, "
        "so its outputs are not valid DICOM instances (`valid UIDs` column) and it keeps "
        "InstitutionName.",
        "- medlens also blanks the burned-in text of every ultrasound copy (decode, text "
        "detection, re-encode uncompressed); deid's `replace_identifiers` does not touch pixels.",
        "- Memory: medlens processes one file at a time: its peak grows "
        f"{growth_mib_per_file('medlens') * 1024:.0f} KiB per extra file (flat); deid's "
        "`get_identifiers` keeps every parsed dataset: "
        f"{growth_mib_per_file('deid'):.2f} MiB per extra file.",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
