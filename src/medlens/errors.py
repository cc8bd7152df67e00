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


def require_at_least_one(options: dict[str, int | None]) -> None:
    """Refuse the first count option under 1 (``{"batch-size": 0}``; None: not given).

    Example:
        >>> require_at_least_one({"epochs": 3, "limit": None})
        >>> try:
        ...     require_at_least_one({"epochs": 0})
        ... except MedlensError as error:
        ...     print(error)
        --epochs must be at least 1, got 0
    """
    for option, value in options.items():
        if value is not None and value < 1:
            raise MedlensError(f"--{option} must be at least 1, got {value}")


def failed_inputs_error(failed: list[MedlensError], *, total: int, task: str) -> MedlensError:
    """One error for a folder run that went on past its bad inputs, naming the first five.

    ``task`` says what the others got, e.g. "segmented".

    Example:
        >>> bad = [MedlensError("truncated JPEG", path="b.jpg")]
        >>> print(failed_inputs_error(bad, total=3, task="segmented"))
        1 of 3 inputs could not be segmented (the others were written):
          b.jpg: truncated JPEG
        fix or remove them, then run them alone (or the folder again with --overwrite)
        >>> print(failed_inputs_error(bad, total=1, task="segmented"))
        none of the 1 inputs could be segmented:
          b.jpg: truncated JPEG
    """
    shown = "".join(f"\n  {error}" for error in failed[:5])
    more = f"\n  and {len(failed) - 5} more" if len(failed) > 5 else ""
    if len(failed) == total:
        return MedlensError(f"none of the {total} inputs could be {task}:{shown}{more}")
    return MedlensError(
        f"{len(failed)} of {total} inputs could not be {task} (the others were written):"
        f"{shown}{more}\nfix or remove them, then run them alone (or the folder again with "
        "--overwrite)"
    )


def warn_unread_subfolders(
    folder: Path, skipped: list[str] | None = None, *, what: str = "sub-folder(s)"
) -> None:
    """Name the folders inside an INPUT folder of image files that a run does not read (e.g.
    a DICOM series beside NIfTI files): said, not skipped silently. ``skipped``: their names
    (default: every sub-folder of ``folder``)."""
    import warnings

    if skipped is None:
        skipped = sorted(path.name for path in Path(folder).iterdir() if path.is_dir())
    if skipped:
        names = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(
            f"{folder}: {len(skipped)} {what} not read ({names}); a DICOM series folder is its "
            "own INPUT",
            MedlensWarning,
            stacklevel=3,
        )
