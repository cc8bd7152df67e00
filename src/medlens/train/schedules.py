"""Learning-rate schedule shared by ``medlens train seg`` and ``medlens train detect``."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    time_progress: float = 0.0,
    floor: float = 0.02,
) -> float:
    """Factor of the peak learning rate at ``step``: linear warm-up, then cosine to ``floor``.

    With a time budget, ``time_progress`` (share of the budget spent) moves the cosine on when
    time runs out before the steps do: the schedule follows whichever ends first.

    Example:
        >>> [round(warmup_cosine(s, warmup_steps=2, total_steps=10), 3) for s in (0, 1, 6, 10)]
        [0.5, 1.0, 0.51, 0.02]
        >>> warmup_cosine(3, warmup_steps=2, total_steps=10, time_progress=1.0)
        0.02
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(progress, time_progress))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
