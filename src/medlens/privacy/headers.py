"""Clean the free-text header fields of NIfTI and NRRD files.

NIfTI-1/2 headers have ``descrip`` (80 chars), ``aux_file``, ``intent_name`` and (NIfTI-1)
``db_name``; converters put patient names, dates or scanner names there, and header extensions
may hold whole DICOM headers. NRRD headers hold free ``key:=value`` pairs and ``#`` comments
next to the fields that define the data. medlens empties the former and drops the latter.
"""

from __future__ import annotations

from pathlib import Path

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output

NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

#: NRRD fields (lower case) that describe the data: kept. Everything else is dropped.
NRRD_DATA_FIELDS = frozenset(
    {
        "type",
        "dimension",
        "space",
        "space dimension",
        "sizes",
        "space directions",
        "kinds",
        "endian",
        "encoding",
        "space origin",
        "spacings",
        "thicknesses",
        "axis mins",
        "axismins",
        "axis maxs",
        "axismaxs",
        "centers",
        "centerings",
        "units",
        "space units",
        "min",
        "max",
        "oldmin",
        "old min",
        "oldmax",
        "old max",
        "measurement frame",
        "block size",
        "blocksize",
        "byte skip",
        "byteskip",
        "line skip",
        "lineskip",
    }
)


def clean_nifti(source: Path, target: Path) -> list[str]:
    """Copy ``source`` to ``target`` with text fields emptied and extensions dropped."""
    import nibabel as nib

    try:
        image = nib.load(str(source))
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedlensError(f"cannot read NIfTI ({error})", path=source) from None
    header = image.header
    cleaned = []
    for field in NIFTI_TEXT_FIELDS:
        if field in header and bytes(header[field].tobytes()).strip(b"\x00 "):
            cleaned.append(field)
        if field in header:
            header[field] = b""
    if header.extensions:
        cleaned.append(f"extensions ({len(header.extensions)})")
        header.extensions.clear()
    out = nib.Nifti1Image if isinstance(image, nib.Nifti1Image) else type(image)
    clean_image = out(image.dataobj, image.affine, header)
    with atomic_output(target) as temporary:
        nib.save(clean_image, str(temporary))
    return cleaned


def clean_nrrd(source: Path, target: Path) -> list[str]:
    """Copy an attached-data NRRD with only its data-defining fields."""
    raw = source.read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise MedlensError("not a NRRD file with an attached header", path=source)
    lines = raw[:end].decode("latin-1").split("\n")
    kept = [lines[0]]
    dropped: list[str] = []
    for line in lines[1:]:
        if line.startswith("#"):
            dropped.append("comment")
            continue
        if ":=" in line:
            dropped.append("key " + str(len(dropped)))  # never the key text (it may identify)
            continue
        field, _, _ = line.partition(":")
        if field.strip().lower() in ("data file", "datafile"):
            raise MedlensError(
                "detached NRRD data files are not supported by deid",
                path=source,
                hint="convert to a single .nrrd first",
            )
        if field.strip().lower() in NRRD_DATA_FIELDS:
            kept.append(line)
        else:
            dropped.append("field " + field.strip().lower())
    with atomic_output(target) as temporary:
        temporary.write_bytes("\n".join(kept).encode("latin-1") + raw[end:])
    return dropped
