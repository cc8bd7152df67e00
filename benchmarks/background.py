"""Pause the tagged background trainings while a benchmark times something.

A busy core slows torch up to 8x (OpenMP spin-wait), so benchmarks SIGSTOP the processes
started with ``--tag medlens_train_bg`` and SIGCONT them afterwards, also when the benchmark
is stopped with SIGTERM (e.g. by ``timeout``) or SIGHUP (its terminal closed). Import it from
a benchmark run as ``python benchmarks/NAME.py`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def paused_background(enabled: bool) -> Iterator[list[int]]:
    """SIGSTOP the background training jobs (``medlens_train_bg``) while timing; always resume.

    Yields the paused process ids (empty when ``enabled`` is false or none run).
    """
    pids: list[int] = []
    if enabled:
        listing = subprocess.run(
            ["pgrep", "-f", "medlens_train_bg"], capture_output=True, text=True
        )
        pids = [int(p) for p in listing.stdout.split() if int(p) != os.getpid()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    # a SIGTERM (e.g. from `timeout`) or SIGHUP must still resume the paused jobs
    previous = {
        number: signal.signal(number, lambda number, _: sys.exit(128 + number))
        for number in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield pids
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
