"""User-facing errors.

A :class:`MedlensError` is a problem with the user's input or request (missing file, wrong
format, bad parameter). The CLI prints it as one line and exits with code 2, without a
traceback unless ``--debug`` is given. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedlensError(Exception):
    """A user error: says which file, what is wrong and what to do.

    Example:
        >>> str(MedlensError("not a DICOM file", path="a.dcm", hint="check the file"))
        'a.dcm: not a DICOM file; check the file'
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str = "") -> None:
        self.path = None if path is None else str(path)
        self.message = message
        self.hint = hint
        text = message if self.path is None else f"{self.path}: {message}"
        if hint:
            text = f"{text}; {hint}"
        super().__init__(text)


class MedlensWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. NaN voxels)."""
