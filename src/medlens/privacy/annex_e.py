"""The PS3.15 Annex E action table (``annex_e.csv``) and the named de-identification profiles.

The table is data: one CSV row per attribute, the Basic Profile action and the action of each
option. A :class:`Profile` is the Basic Profile plus a set of options; :func:`action_table`
resolves every row to one action for that profile.

Choices where the standard allows alternatives (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``,
``X/Z/U*``): medlens keeps a type-2 attribute present but empty (``Z``) when the standard
allows it, removes (``X``) when ``D`` is the other choice, and remaps UIDs inside referencing
sequences (``U*``) so references stay valid.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from importlib import resources

from medlens.errors import MedlensError

#: Profile option name -> (column in annex_e.csv, DICOM CID 7050 code, meaning).
OPTIONS: dict[str, tuple[str, str, str]] = {
    "dates": (
        "dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "patient": ("patient", "113108", "Retain Patient Characteristics Option"),
    "device": ("device", "113109", "Retain Device Identity Option"),
    "descriptors": ("descriptors", "113105", "Clean Descriptors Option"),
}
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXELS_CODE = ("113101", "Clean Pixel Data Option")

#: Named profiles for ``--profile``; ``a+b`` combines options.
PRESETS: dict[str, tuple[str, ...]] = {
    "basic": (),
    "research": ("dates", "descriptors"),
    "longitudinal": ("dates", "patient", "device", "descriptors"),
}
DEFAULT_PROFILE = "research"

_COMPOUND = {"X/Z": "Z", "X/D": "X", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "U"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Basic Profile plus options (a subset of :data:`OPTIONS`).

    Example:
        >>> Profile.parse("basic+dates").options
        ('dates',)
        >>> Profile.parse("research").options
        ('dates', 'descriptors')
    """

    options: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Profile:
        chosen: list[str] = []
        for part in (p.strip().lower() for p in text.replace(",", "+").split("+")):
            if not part:
                continue
            if part in PRESETS:
                chosen.extend(PRESETS[part])
            elif part in OPTIONS:
                chosen.append(part)
            else:
                raise MedlensError(
                    f"unknown de-identification profile or option '{part}'",
                    hint="use " + ", ".join([*PRESETS, *OPTIONS]) + " joined by '+'",
                )
        return cls(tuple(o for o in OPTIONS if o in chosen))

    @property
    def name(self) -> str:
        return "+".join(("basic", *self.options))

    def codes(self) -> list[tuple[str, str]]:
        return [BASIC_CODE, *(OPTIONS[o][1:] for o in self.options)]


@dataclasses.dataclass(frozen=True)
class Rule:
    tag: str
    name: str
    action: str


@functools.lru_cache(maxsize=1)
def load_rows() -> tuple[dict[str, str], ...]:
    """The rows of ``annex_e.csv`` (comments skipped), read once per process."""
    text = resources.files("medlens.privacy").joinpath("annex_e.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(csv.DictReader(lines))


def _tag_key(tag: str) -> int | str:
    """``00100010`` -> 0x00100010; patterns (``50xxxxxx``, ``ggggxxxx``) stay strings."""
    try:
        return int(tag, 16)
    except ValueError:
        return tag.lower()


@functools.lru_cache(maxsize=16)
def action_table(profile: Profile) -> dict[int | str, Rule]:
    """Tag (int, or pattern string) -> resolved rule for ``profile``."""
    table: dict[int | str, Rule] = {}
    for row in load_rows():
        action = row["basic"]
        for option in profile.options:
            override = row[OPTIONS[option][0]]
            if override:
                action = override
        table[_tag_key(row["tag"])] = Rule(row["tag"], row["name"], _COMPOUND.get(action, action))
    return table
