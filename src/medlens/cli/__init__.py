"""The ``medlens`` command: ``medlens TASK ...`` with sane defaults.

User errors (:class:`~medlens.errors.MedlensError`) print one line and exit with code 2;
``--debug`` shows the traceback instead. Each task lives in its module; the modules of this
package only parse arguments and print, one module per group of commands.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from rich.markup import escape

from medlens.cli import data, evaluate, predict, privacy, train  # noqa: F401 (registers commands)
from medlens.cli.app import app, stderr
from medlens.errors import MedlensError, MedlensWarning

__all__ = ["app", "main"]


# --------------------------------------------------------------------------- entry point
def _show_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    if issubclass(category, MedlensWarning):
        stderr.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        stderr.print(f"[dim]{category.__name__}: {message}[/]", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors exit with code 2 and one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # scoped by catch_warnings
        # every occurrence matters (e.g. NaN counts of each file in a batch), not just the first
        warnings.simplefilter("always", MedlensWarning)
        try:
            app(args=args, prog_name="medlens", standalone_mode=True)
        except MedlensError as error:
            if debug:
                raise
            stderr.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise SystemExit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[red]interrupted[/]")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
