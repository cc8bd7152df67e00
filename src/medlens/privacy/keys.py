"""Keyed pseudonyms: HMAC-SHA256 with a secret key file.

Everything derived here is a deterministic function of (key, original value): the same patient
gets the same pseudonym, UID and date offset in every file and every run with one key, and
unrelated ones with another key. Without the key nothing can be recomputed or reversed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from pathlib import Path

from medlens.errors import MedlensError

#: Shortest accepted key file (bytes): 256 bits, the HMAC-SHA256 block security level.
MIN_KEY_BYTES = 32


def load_key(path: str | Path) -> bytes:
    """Read the secret key file; refuse a missing or short (< 32 bytes) one.

    Create a key with ``head -c 64 /dev/urandom > deid.key`` (keep it away from the output).
    """
    path = Path(path)
    if not path.is_file():
        raise MedlensError(
            "key file not found",
            path=path,
            hint="create one with `head -c 64 /dev/urandom > deid.key`",
        )
    key = path.read_bytes()
    if len(key.strip()) < MIN_KEY_BYTES:
        raise MedlensError(
            f"key file holds {len(key.strip())} bytes, at least {MIN_KEY_BYTES} are needed",
            path=path,
            hint="create one with `head -c 64 /dev/urandom > deid.key`",
        )
    return key


class Pseudonymizer:
    """Keyed, deterministic replacements for identifying values.

    Example:
        >>> p = Pseudonymizer(b"k" * 32)
        >>> p.uid("1.2.3") == p.uid("1.2.3") and p.uid("1.2.3").startswith("2.25.")
        True
        >>> p.patient_id("cookie-47") != Pseudonymizer(b"x" * 32).patient_id("cookie-47")
        True
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        # Caches: one study has many files sharing UIDs and one patient.
        self.uid = functools.lru_cache(maxsize=65536)(self._uid)  # type: ignore[method-assign]

    def digest(self, purpose: str, value: str | bytes) -> bytes:
        """HMAC-SHA256 of ``value``, domain-separated by ``purpose``."""
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return hmac.new(self._key, purpose.encode() + b"\x00" + data, hashlib.sha256).digest()

    def keyed_hash(self, value: str | bytes) -> str:
        """Short keyed hash for audit logs (16 hex digits): lets a key holder check a value."""
        return self.digest("audit", value).hex()[:16]

    def _uid(self, uid: str) -> str:
        """``2.25.<int>`` UID (ISO/IEC 9834-8 UUID-derived form) from the original UID."""
        number = int.from_bytes(self.digest("uid", uid.strip())[:16], "big")
        return f"2.25.{number}"

    def patient_id(self, identity: str) -> str:
        return "P" + self.digest("patient-id", identity).hex()[:15].upper()

    def patient_name(self, identity: str) -> str:
        return "ANON^" + self.digest("patient-name", identity).hex()[:10].upper()

    def date_offset_days(self, identity: str) -> int:
        """Per-patient shift into the past, 365 to 4014 days (never zero)."""
        value = int.from_bytes(self.digest("date-offset", identity)[:4], "big")
        return -(365 + value % 3650)

    def file_stem(self, relative_path: str) -> str:
        return self.digest("path", relative_path).hex()[:24]
