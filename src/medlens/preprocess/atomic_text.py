"""Write a small text file atomically (pipeline YAML, provenance JSON)."""

from __future__ import annotations

from pathlib import Path

from medlens.io.atomic import atomic_output


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text)
    return Path(path)
