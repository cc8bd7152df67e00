"""A training run's folder: what may be written into it."""

from __future__ import annotations

from pathlib import Path

from medlens.errors import MedlensError


def refuse_replacing_checkpoint(out: Path, *, resume: bool) -> None:
    """Refuse to start a new run in a folder that holds a checkpoint (hours of training
    are not replaced), and ``--resume`` where there is none to continue."""
    checkpoint = Path(out) / "checkpoint.pt"
    if checkpoint.is_file() and not resume:
        raise MedlensError(
            "run folder already has a checkpoint",
            path=out,
            hint="pass --resume to continue it, or a new --out",
        )
