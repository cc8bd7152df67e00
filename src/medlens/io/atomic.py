"""Write-to-temp-then-rename, so a crash never leaves half a file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medlens.errors import MedlensError

# Multi-part suffixes the writers care about (the temp file must keep them so that
# libraries that pick the format from the name write the right one).
_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def full_suffix(path: str | Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.png`` for ``a.png`` (lower case)."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def file_stem(path: str | Path) -> str:
    """The file name without its image suffix (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    return name[: len(name) - len(full_suffix(name))]


def refuse_shared_outputs(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Refuse, before any work, two inputs that would write one output (``a.jpg`` and
    ``a.png`` -> ``a.png``): the second would replace the first's result unseen."""
    by_output: dict[Path, Path] = {}
    for source, output in pairs:
        if output in by_output:
            raise MedlensError(
                f"{by_output[output].name} and {source.name} would both write {output.name}",
                path=source.parent,
                hint="rename one of them or run them separately",
            )
        by_output[output] = source


def prepare_output(path: str | Path, *, overwrite: bool = True, create_folder: bool = True) -> Path:
    """Check that ``path`` can be written: parent folder creatable, no clash unless allowed.

    ``create_folder=False`` checks without creating missing folders (the nearest existing one
    must be writable), so a run refused later leaves no empty output folder behind.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise MedlensError("output path is a folder, expected a file name", path=path)
    if path.exists() and not overwrite:
        raise MedlensError("output exists", path=path, hint="pass --overwrite to replace it")
    nearest = next((parent for parent in path.parents if parent.exists()), Path("."))
    if not nearest.is_dir():
        raise MedlensError(
            f"cannot write {path.name} here: {nearest} is a file, not a folder",
            path=path,
            hint="choose an output path inside a folder",
        )
    if create_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MedlensError(
                f"cannot create output folder ({error.strerror or error})",
                path=path.parent,
                hint="choose a writable output location",
            ) from None
        nearest = path.parent
    # Probe with a real file: os.access says yes for root on read-only mounts and /proc.
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=nearest)
    except OSError as error:
        raise MedlensError(
            f"output folder is not writable ({error.strerror or error})",
            path=nearest,
            hint="choose a writable output location",
        ) from None
    os.close(handle)
    os.unlink(probe)
    return path


def refuse_replacing_inputs(inputs: Iterable[Path], outputs: Iterable[Path]) -> None:
    """Refuse an output that is one of the inputs, even with ``--overwrite``.

    Raw scans and frames are what a user cannot get back; write results next to them, not
    over them.

    Example:
        >>> refuse_replacing_inputs([Path("a.png")], [Path("out/a.png")])  # fine
        >>> try:
        ...     refuse_replacing_inputs([Path("a.png")], [Path("./a.png")])
        ... except MedlensError as error:
        ...     print(error.message)
        this output would replace an input
    """
    sources = {Path(path).resolve() for path in inputs}
    for output in outputs:
        if Path(output).resolve() in sources:
            raise MedlensError(
                "this output would replace an input",
                path=output,
                hint="write it to a folder apart from the inputs",
            )


@contextlib.contextmanager
def atomic_output(
    path: str | Path, *, overwrite: bool = True, mode: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only on success.

    The file gets the usual umask permissions, or ``mode`` (e.g. ``0o600`` for secrets).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_output(folder / "a.txt") as temporary:
        ...     _ = temporary.write_text("done")
        >>> (folder / "a.txt").read_text()
        'done'
    """
    path = prepare_output(path, overwrite=overwrite)
    suffix = full_suffix(path)
    try:
        handle, temporary_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent
        )
    except OSError as error:
        raise MedlensError(
            f"cannot write output ({error.strerror or error})",
            path=path,
            hint="choose a writable output location",
        ) from None
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        # mkstemp creates 0600 files; unless told otherwise (secrets), give the result the
        # permissions a plain open() would
        os.chmod(temporary, 0o666 & ~_current_umask() if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
