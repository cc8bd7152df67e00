"""Training/validation splits: seeded hold-out, k-fold, fixed from a file, grouped.

As nnU-Net's ``splits_final.json``: a run writes its split, and ``--split`` replays one (a
run's split.json or a model card's). Near-duplicate 2D frames (neighbouring slices of one
scan) can be kept on one side, so validation measures unseen scans.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from medlens.data.near_duplicates import similarity_groups, thumbnail_signature
from medlens.errors import MedlensError
from medlens.image import Image


def read_split_file(path: Path, case_ids: list[str]) -> tuple[list[str], list[str], int | None]:
    """Train/validation ids fixed by ``path``: a run's split.json or a model card.

    A model card (model.json) holds the split under ``training.split``. Every id must be a case
    of the data, and no case may be on both sides. The third value is the split's
    cross-validation fold where the file names one (a ``--fold`` run's), else None, so that a
    run trained on it records the same fold.

    >>> import json, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "split.json"
    >>> _ = path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "fold": 2}))
    >>> read_split_file(path, ["a", "b", "c", "d"])
    (['a', 'b'], ['c'], 2)
    """
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise MedlensError(f"cannot read the split: {error}", path=path) from None
    if isinstance(content, dict) and "train" not in content:
        content = (content.get("training") or {}).get("split")
    if not (
        isinstance(content, dict)
        and all(isinstance(content.get(side), list) for side in ("train", "val"))
    ):
        raise MedlensError(
            "no split in this file",
            path=path,
            hint='give a JSON with "train" and "val" lists of case ids (a run\'s split.json) '
            "or a model.json",
        )
    train, val = sorted(map(str, content["train"])), sorted(map(str, content["val"]))
    unknown = sorted(set(train + val) - set(case_ids))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise MedlensError(
            f"{len(unknown)} case ids of the split are not in the data: {shown}",
            path=path,
            hint="train on the data the split was made for",
        )
    both = sorted(set(train) & set(val))
    if both:
        raise MedlensError(f"cases on both sides of the split: {', '.join(both[:5])}", path=path)
    if not train or not val:
        raise MedlensError("the split needs training and validation cases", path=path)
    fold = content.get("fold")
    return train, val, fold if isinstance(fold, int) and not isinstance(fold, bool) else None


def make_split(
    case_ids: list[str],
    *,
    val_fraction: float,
    seed: int,
    forced_val: list[str],
    fold: int | None,
    folds: int,
    groups: dict[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Train/validation case ids: seeded hold-out, or fold ``fold`` of ``folds``.

    Cases in ``forced_val`` are always validation cases (e.g. the bundled demo cases, which
    a shipped model must never have trained on). With ``groups`` (case id -> group, e.g. the
    frames of one scan), whole groups go to one side: a forced case takes its group along,
    and the hold-out or fold is drawn group by group.

    >>> make_split(["a1", "a2", "b1", "c1"], val_fraction=0.5, seed=1, forced_val=[],
    ...            fold=None, folds=5, groups={"a1": 0, "a2": 0, "b1": 1, "c1": 2})
    (['b1', 'c1'], ['a1', 'a2'])
    """
    unknown = sorted(set(forced_val) - set(case_ids))
    if unknown:
        raise MedlensError(f"--val-cases not in the data: {', '.join(unknown)}")
    # every case is its own group unless grouped; a split is then a split of groups
    group_of = groups or {case: index for index, case in enumerate(case_ids)}
    forced_groups = {group_of[c] for c in forced_val}
    forced = [c for c in case_ids if group_of[c] in forced_groups]
    rest_groups = sorted({group_of[c] for c in case_ids} - forced_groups)
    order = np.random.default_rng(seed).permutation(len(rest_groups))
    shuffled = [rest_groups[i] for i in order]
    if fold is not None:
        if not 0 <= fold < folds:
            raise MedlensError(f"--fold {fold} out of range 0..{folds - 1}")
        chunks = np.array_split(np.arange(len(shuffled)), folds)
        val_groups = {shuffled[i] for i in chunks[fold]}
    else:
        target = max(1, round(val_fraction * len(case_ids)) - len(forced))
        size = Counter(group_of[c] for c in case_ids)
        val_groups, count = set(), 0
        for group in shuffled:
            if count >= target:
                break
            val_groups.add(group)
            count += size[group]
    val_groups |= forced_groups
    val = sorted(c for c in case_ids if group_of[c] in val_groups)
    train = sorted(c for c in case_ids if group_of[c] not in val_groups)
    if not train:
        raise MedlensError("no training cases left after the split", hint="add more cases")
    return train, val


def similar_frame_groups(images: list[Image], case_ids: list[str]) -> dict[str, int]:
    """Case id -> group of near-duplicate 2D frames (e.g. neighbouring slices of one scan
    exported one by one), linked at :data:`~medlens.data.near_duplicates.SAME_SCAN_SIMILARITY`.
    """
    signatures = np.stack([thumbnail_signature(image.array.mean(0)[..., 0]) for image in images])
    return dict(zip(case_ids, similarity_groups(signatures).tolist(), strict=True))
