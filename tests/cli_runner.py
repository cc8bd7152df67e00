"""Run the ``medlens`` command in-process, as the tests of several modules do."""

from __future__ import annotations

import pytest

from medlens.cli import main


def run_cli(args: list[str]) -> int:
    """Exit code of ``medlens ARGS`` (the command always exits through ``SystemExit``)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)
