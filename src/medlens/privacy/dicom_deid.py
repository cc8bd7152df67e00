"""De-identify one DICOM dataset: the Annex E table, keyed pseudonyms, UIDs, dates, pixels.

:class:`DicomDeidentifier` applies the resolved action table of a :class:`Profile` to every
element, recursively through sequences:

- ``X`` remove, ``Z`` empty, ``D`` dummy, ``K`` keep, ``U`` keyed ``2.25.<int>`` UID,
  ``C`` clean: dates shifted by the patient's keyed offset, free text stripped of every
  identifying value found in the same file;
- PatientID / PatientName get keyed pseudonyms (one patient -> one pseudonym per key);
- every other UID that is not a registered DICOM UID (SOP classes, transfer syntaxes, coding
  schemes) is remapped too, wherever it is (nested references, file meta);
- safety nets beyond the table (the standard's table cannot list every attribute): other
  person names (PN), dates (DA/DT), AE titles and long free text (LT/ST/UT) are treated like
  their nearest table rows; private groups are removed except the ``safe_private.csv`` list;
- burned-in annotations are blanked (recipe regions + text detection) or the file refused.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import re
from importlib import resources
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from medlens.privacy.annex_e import CLEAN_PIXELS_CODE, Profile, Rule, action_table
from medlens.privacy.keys import Pseudonymizer
from medlens.privacy.pixels import blank, detect_text_boxes, recipe_regions, to_gray

#: Modalities whose images often carry burned-in text (screen captures).
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XA", "OT", "ES"})
#: Originals whose keyed hash goes to the audit log (lets a key holder match records).
_HASHED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PIXEL_DATA = 0x7FE00010
_NEVER_TOUCH = frozenset({PIXEL_DATA, 0x00080016, 0x00080005})
_REGISTERED_UIDS: frozenset[str] = frozenset(pydicom.uid.UID_dictionary)  # type: ignore[attr-defined]
_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_FREE_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN"})
_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UR"}
)
_DUMMY = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "UI": "2.25.0",
    "LO": "REMOVED",
    "SH": "REMOVED",
    "CS": "REMOVED",
    "AE": "REMOVED",
}


class BurnedInRefused(Exception):
    """The image may carry burned-in text that medlens could not find and blank."""


@dataclasses.dataclass
class Audit:
    """What happened to one file; attribute keywords only, originals as keyed hashes."""

    removed: set[str] = dataclasses.field(default_factory=set)
    emptied: set[str] = dataclasses.field(default_factory=set)
    replaced: set[str] = dataclasses.field(default_factory=set)
    kept: set[str] = dataclasses.field(default_factory=set)
    cleaned: set[str] = dataclasses.field(default_factory=set)
    uids_remapped: int = 0
    private_removed: int = 0
    private_kept: set[str] = dataclasses.field(default_factory=set)
    original_hashes: dict[str, str] = dataclasses.field(default_factory=dict)
    pixels: str = "unchanged"
    pixel_regions: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies, a measurable cost per file
        return {
            field.name: sorted(value) if isinstance(value, set) else value
            for field in dataclasses.fields(self)
            for value in (getattr(self, field.name),)
        }


@functools.lru_cache(maxsize=1)
def safe_private() -> frozenset[tuple[str, int, int]]:
    text = resources.files("medlens.privacy").joinpath("safe_private.csv").read_text("utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return frozenset((r["creator"], int(r["group"], 16), int(r["element"], 16)) for r in rows)


@functools.lru_cache(maxsize=1)
def _safe_creators() -> frozenset[tuple[str, int]]:
    return frozenset((creator, group) for creator, group, _ in safe_private())


@functools.lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return pydicom.datadict.keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class DicomDeidentifier:
    """Apply one profile with one key to datasets (reuse it across files: caches are shared).

    Example:
        >>> from medlens.privacy.annex_e import Profile
        >>> deid = DicomDeidentifier(b"k" * 32, Profile.parse("research"))
        >>> ds = Dataset(); ds.PatientName = "DOE^JOHN"; ds.PatientID = "123"
        >>> ds.StudyDate = "20200102"; ds.StudyInstanceUID = "1.2.3.4"
        >>> audit = deid.apply(ds)
        >>> str(ds.PatientName).startswith("ANON^"), ds.StudyInstanceUID.startswith("2.25.")
        (True, True)
    """

    def __init__(self, key: bytes, profile: Profile) -> None:
        self.profile = profile
        self.keys = Pseudonymizer(key)
        self.table = action_table(profile)
        self._shift_dates = "dates" in profile.options
        self._keep_device = "device" in profile.options
        self._clean_text = "descriptors" in profile.options

    # ------------------------------------------------------------------ dataset
    def apply(self, ds: Dataset) -> Audit:
        """De-identify ``ds`` in place (pixels untouched: see :meth:`scrub_pixels`)."""
        audit = Audit()
        identity = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        offset = self.keys.date_offset_days(identity)
        identifiers = self._identifiers(ds)
        for keyword in _HASHED:
            value = ds.get(keyword)
            if value:
                audit.original_hashes[keyword] = self.keys.keyed_hash(str(value))
        self._walk(ds, audit, offset=offset, identifiers=identifiers, depth=0)
        # pseudonyms last: the walk emptied them (Z), now fill the keyed values
        ds.PatientID = self.keys.patient_id(identity) if identity else ""
        ds.PatientName = self.keys.patient_name(identity) if identity else ""
        audit.replaced.update({"PatientID", "PatientName"})
        audit.emptied.difference_update({"PatientID", "PatientName"})
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"medlens deid {self.profile.name} (PS3.15 Annex E)"
        ds.DeidentificationMethodCodeSequence = Sequence(
            [self._code(value, meaning) for value, meaning in self.profile.codes()]
        )
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self._shift_dates else "REMOVED"
        return audit

    @staticmethod
    def _code(value: str, meaning: str) -> Dataset:
        # DataElements directly: attribute assignment goes through pydicom's slower lookups
        item = Dataset()
        item.add(DataElement(0x00080100, "SH", value))
        item.add(DataElement(0x00080102, "SH", "DCM"))
        item.add(DataElement(0x00080104, "LO", meaning))
        return item

    def _identifiers(self, ds: Dataset) -> list[str]:
        """Identifying strings of this file, to clean out of free text (longest first).

        Works on the raw bytes (no pydicom value conversion: most elements are never
        converted at all, which is what makes de-identification fast).
        """
        found: set[str] = set()
        self._collect_identifiers(ds, found)
        return sorted(found, key=len, reverse=True)

    def _collect_identifiers(self, ds: Dataset, found: set[str]) -> None:
        for tag in list(ds.keys()):
            if tag.is_private or (tag >> 16) == 0x0002:
                continue
            vr = _vr(ds, tag)
            rule = self.table.get(int(tag))
            if vr == "SQ":
                if rule is None or rule.action != "X":  # removed sequences need no cleaning
                    for item in ds[tag].value:
                        self._collect_identifiers(item, found)
                continue
            if vr not in _STRING_VRS or vr in _TEXT_VRS:
                continue
            if not (vr == "PN" or (rule and rule.action in "XZDU")):
                continue
            text = _text(ds.get_item(tag))
            for value in text.split("\\"):
                parts = [value, *re.split(r"[\^=\s,]+", value)]
                found.update(p.strip() for p in parts if len(p.strip()) >= 3)

    def _walk(
        self, ds: Dataset, audit: Audit, *, offset: int, identifiers: list[str], depth: int
    ) -> None:
        creators = self._private_creators(ds)
        for tag in list(ds.keys()):
            number = int(tag)
            if number in _NEVER_TOUCH or (number >> 16) == 0x0002:
                continue
            if tag.is_private:
                self._private(ds, tag, creators, audit)
                continue
            vr = _vr(ds, tag)
            action, name = self._action(number, vr)
            if action == "X":
                del ds[tag]
                audit.removed.add(name)
            elif action == "Z":
                if vr == "SQ":
                    ds[tag] = DataElement(tag, "SQ", Sequence())
                elif _text(ds.get_item(tag)):
                    ds[tag] = DataElement(tag, vr, "" if vr in _STRING_VRS else None)
                    audit.emptied.add(name)
            elif action == "D" and vr != "SQ":
                ds[tag] = DataElement(tag, vr, _DUMMY.get(vr, ""))
                audit.replaced.add(name)
            elif action in "DUK" and vr == "SQ":
                for item in ds[tag].value:
                    self._walk(item, audit, offset=offset, identifiers=identifiers, depth=depth + 1)
            elif action == "U" or (action == "K" and vr == "UI"):
                self._remap_uid(ds[tag], audit)
            elif action == "C":
                self._clean(ds[tag], audit, offset=offset, identifiers=identifiers, name=name)
            elif (
                vr in _FREE_VRS
                and identifiers
                and number not in self.table  # not retained by an option
                and _contains_any(_text(ds.get_item(tag)), identifiers)
            ):
                # a kept attribute repeating an identifying value of this file
                # (e.g. Scheduled Procedure Step ID = Accession Number)
                element = ds[tag]
                element.value = _scrub_text(element.value, identifiers)
                audit.cleaned.add(name)
            elif depth == 0:
                audit.kept.add(name)

    def _action(self, tag: int, vr: str) -> tuple[str, str]:
        name = _keyword(tag)
        rule: Rule | None = self.table.get(tag)
        if rule is None:
            group = tag >> 16
            if 0x5000 <= group <= 0x50FF and group % 2 == 0:
                rule = self.table["50xxxxxx"]
            elif (
                0x6000 <= group <= 0x60FF and group % 2 == 0 and (tag & 0xFFFF) in (0x3000, 0x4000)
            ):
                rule = self.table[f"60xx{tag & 0xFFFF:04x}"]
            elif 0x6000 <= group <= 0x60FF and group % 2 == 0:
                return "X", name  # the rest of an overlay group goes with its data
        if rule is not None:
            return rule.action, name
        # safety nets for attributes the table does not list
        if vr == "PN":
            return "X", name
        if vr in ("DA", "DT"):
            return ("C" if self._shift_dates else "X"), name
        if vr == "AE":
            return ("K" if self._keep_device else "X"), name
        if vr in _TEXT_VRS:
            return ("C" if self._clean_text else "X"), name
        return "K", name

    # ------------------------------------------------------------------ actions
    def _remap_uid(self, element: DataElement, audit: Audit) -> None:
        value = element.value
        if not value:
            return
        values = (
            list(value)
            if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
            else [value]
        )
        new = [v if str(v) in _REGISTERED_UIDS else self.keys.uid(str(v)) for v in values]
        audit.uids_remapped += sum(a != b for a, b in zip(values, new, strict=True))
        element.value = new if len(new) > 1 else new[0]

    def _clean(
        self, element: DataElement, audit: Audit, *, offset: int, identifiers: list[str], name: str
    ) -> None:
        vr = element.VR
        if vr in ("DA", "DT"):
            element.value = _shift(element.value, offset, vr)
            audit.replaced.add(name)
        elif vr == "TM":
            audit.kept.add(name)  # whole-day shifts keep the time of day
        elif vr == "SQ":
            for item in element.value:
                self._walk(item, audit, offset=offset, identifiers=identifiers, depth=1)
        elif vr in _STRING_VRS:
            before = element.value
            element.value = _scrub_text(before, identifiers)
            (audit.cleaned if element.value != before else audit.kept).add(name)
        else:
            audit.kept.add(name)

    @staticmethod
    def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
        return {
            (tag.group, tag.element): _text(ds.get_item(tag))
            for tag in ds.keys()  # noqa: SIM118 - iterating ds itself converts every value
            if tag.is_private and 0x10 <= tag.element <= 0xFF
        }

    def _private(
        self, ds: Dataset, tag: Any, creators: dict[tuple[int, int], str], audit: Audit
    ) -> None:
        creator = creators.get((tag.group, tag.element >> 8))
        if creator is not None and (creator, tag.group, tag.element & 0xFF) in safe_private():
            audit.private_kept.add(f"{creator}:{tag.group:04X},xx{tag.element & 0xFF:02X}")
            return
        own = creators.get((tag.group, tag.element))
        if own is not None and (own, tag.group) in _safe_creators():
            return  # the creator of kept safe attributes stays with them
        del ds[tag]
        audit.private_removed += 1

    # ------------------------------------------------------------------ pixels
    @staticmethod
    def needs_pixel_check(ds: Dataset) -> bool:
        if "PixelData" not in ds:
            return False
        flagged = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
        return flagged or str(ds.get("Modality", "")).upper() in BURNED_IN_MODALITIES

    def scrub_pixels(self, ds: Dataset, audit: Audit) -> None:
        """Blank burned-in text (recipe + detection); raise :class:`BurnedInRefused` if unsure.

        Call with the *original* header still present (recipes match device attributes).
        """
        flagged = str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
        try:
            pixels = ds.pixel_array
        except Exception as error:  # noqa: BLE001 - any decoder failure means we cannot check
            raise BurnedInRefused(f"pixel data cannot be decoded ({error})") from None
        color = int(ds.get("SamplesPerPixel", 1)) > 1
        boxes: list[tuple[int, int, int, int]] = []
        for label, box in recipe_regions(ds):
            boxes.append(box)
            audit.pixel_regions.append({"source": "recipe", "label": label, "box": list(box)})
        frames = pixels.reshape((-1, *pixels.shape[-3 if color else -2 :]))
        # detection on the brightest projection over frames (text is static on captures)
        projection = frames.max(axis=0)
        gray = to_gray(projection) if color else projection
        for box in detect_text_boxes(gray):
            boxes.append(box)
            audit.pixel_regions.append({"source": "detected", "box": list(box)})
        if not boxes and flagged:
            # flagged but no bright text: look for dark text on a bright background
            darkest = to_gray(frames.min(axis=0)) if color else frames.min(axis=0)
            inverted = darkest.max() - darkest
            for box in detect_text_boxes(inverted):
                boxes.append(box)
                audit.pixel_regions.append({"source": "detected (dark text)", "box": list(box)})
        if not boxes:
            if flagged:
                raise BurnedInRefused(
                    "BurnedInAnnotation is YES but no known region or text was found"
                )
            audit.pixels = "checked, no text found"
            return
        cleaned = blank(pixels, boxes, color=color, value=0)
        self._store_native(ds, cleaned, color=color)
        ds.BurnedInAnnotation = "NO"
        codes = (
            ds.DeidentificationMethodCodeSequence
            if "DeidentificationMethodCodeSequence" in ds
            else None
        )
        if codes is not None:
            codes.append(self._code(*CLEAN_PIXELS_CODE))
        audit.pixels = f"scrubbed {len(boxes)} regions"

    @staticmethod
    def _store_native(ds: Dataset, pixels: np.ndarray, *, color: bool) -> None:
        """Write decoded pixels back uncompressed (explicit VR little endian)."""
        was_compressed = ds.file_meta.TransferSyntaxUID.is_compressed
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if color:
            # pydicom converts YBR to RGB when decoding
            if str(ds.PhotometricInterpretation).startswith("YBR") and was_compressed:
                ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0


# ---------------------------------------------------------------------- helpers
def _vr(ds: Dataset, tag: Any) -> str:
    """VR of an element without converting its value (dictionary VR for implicit/UN)."""
    vr = ds.get_item(tag).VR
    if vr and vr != "UN":
        return str(vr)
    try:
        return str(pydicom.datadict.dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _text(item: Any) -> str:
    """Value as text, from raw bytes when not converted yet (UTF-8, else Latin-1)."""
    value = item.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip(" \x00")
        except UnicodeDecodeError:
            return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _shift_date(text: str, offset: int) -> str:
    text = text.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    return (day + datetime.timedelta(days=offset)).strftime("%Y%m%d") + text[8:]


def _shift(value: Any, offset: int, vr: str) -> Any:
    """Shift DA/DT values (also ranges ``a-b`` and multi-values) by ``offset`` days."""
    if value in (None, ""):
        return value
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_shift(v, offset, vr) for v in value]
    text = str(value)
    return (
        "-".join(_shift_date(part, offset) if part else "" for part in text.split("-"))
        if vr == "DA"
        else _shift_date(text, offset)
    )


def _contains_any(value: Any, identifiers: list[str]) -> bool:
    text = str(value).lower() if not isinstance(value, bytes) else ""
    return any(identifier.lower() in text for identifier in identifiers)


_DATE_PATTERN = re.compile(r"\b(\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{8})\b")


def _scrub_text(value: Any, identifiers: list[str]) -> Any:
    """Remove identifying values of the same file (and date-like strings) from free text."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_scrub_text(v, identifiers) for v in value]
    if value is None:
        return value
    text = str(value)
    for identifier in identifiers:
        if identifier.lower() in text.lower():
            text = re.sub(re.escape(identifier), "*", text, flags=re.IGNORECASE)
    return _DATE_PATTERN.sub("*", text)


def new_file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    """Fresh file meta (no source AE title, no original implementation UIDs)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta
